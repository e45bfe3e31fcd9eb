"""The serving contract, in one place: written next to the exported core by export.py and read back
by every consumer (handler, batch scoring, benchmarks), so no limit or label is a scattered literal."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from text import Features

MODEL_NAME = "sentiment"
SIGNATURE_FILE = "signature.json"
MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"
VOCAB_FILE = "vocab.json"


@dataclass
class Signature:
    model_name: str
    version: str
    features: Features
    metrics: dict
    data_md5: dict
    labels: tuple = ("negative", "positive")
    threshold: float = 0.5
    max_chars: int = 10_000  # per text; long film reviews run to ~14k characters, rt-polarity snippets to ~270
    max_texts: int = 64  # per request in {"texts": [...]}
    model_file: str = MODEL_FILE
    onnx_file: str = ONNX_FILE
    vocab_file: str = VOCAB_FILE
    inputs: list = field(
        default_factory=lambda: [
            {"name": "ids", "dtype": "int64", "shape": ["n_features"], "doc": "feature ids of all texts, concatenated"},
            {"name": "offsets", "dtype": "int64", "shape": ["batch"], "doc": "start of each text in ids"},
        ]
    )
    outputs: list = field(
        default_factory=lambda: [{"name": "logit", "dtype": "float32", "shape": ["batch"], "doc": "probability = sigmoid(logit)"}]
    )

    def label(self, probability: float) -> str:
        return self.labels[int(probability >= self.threshold)]

    def save(self, folder: Path) -> None:
        (Path(folder) / SIGNATURE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "Signature":
        fields = json.loads((Path(folder) / SIGNATURE_FILE).read_text())
        fields["labels"] = tuple(fields["labels"])
        fields["features"] = Features(**fields["features"])
        return cls(**fields)


def load_vocab_index(folder: Path, signature: Signature) -> dict[str, int]:
    vocab = json.loads((Path(folder) / signature.vocab_file).read_text())
    return {gram: i for i, gram in enumerate(vocab)}
