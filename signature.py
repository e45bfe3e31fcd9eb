"""The serving contract, in one place: written next to the exported core by export.py and read back
by every consumer (handler, batch scoring, benchmarks), so no limit or label is a scattered literal."""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from text import Encoder, Features, WordPieceEncoder

MODEL_NAME = "sentiment"
SIGNATURE_FILE = "signature.json"
MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"
VOCAB_FILE = "vocab.json"
TOKENIZER_FILE = "tokenizer.json"
NBSVM, TRANSFORMER = "nbsvm", "transformer"  # Signature.architecture: v1, v2
# Texts a request may hold, per version, written into the signature by export.py. v2's are few: with 2
# workers on 2 cores its forward pass costs ~55 ms a text of max_length tokens and an explanation STEPS + 2
# passes, and a batch (model-config-v2.yaml: batchSize 8) must end well within its responseTimeout.
LIMITS = {NBSVM: {"max_texts": 64, "max_explain_texts": 64}, TRANSFORMER: {"max_texts": 16, "max_explain_texts": 2}}
TRANSFORMER_INPUTS = [
    {"name": "input_ids", "dtype": "int64", "shape": ["batch", "length"], "doc": "WordPiece ids, [CLS] ... [SEP], padded with 0"},
    {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "length"], "doc": "1 for a real token, 0 for padding"},
]
# A float32 sigmoid reaches 1.0 for logits above ~16.6: probabilities are clipped to this distance from 0 and 1
# before their logit is taken, by the calibration's fit (export.py) and by every use of it (Signature.calibrate).
CALIBRATION_CLIP = 1e-7


@dataclass
class Signature:
    model_name: str
    version: str
    features: Features | None  # v1's n-gram settings; None for the transformer
    metrics: dict
    data_md5: dict
    architecture: str = NBSVM
    labels: tuple = ("negative", "positive")
    threshold: float = 0.5
    # The limits and cost model, in one place: export writes them here (per version: LIMITS), the handler,
    # batch_predict, ts_properties (config.properties' sizes) and docs/api.md read them back.
    max_chars: int = 10_000  # per text, as sent and once normalised; long film reviews run to ~14k characters
    max_texts: int = 64  # per prediction request in {"texts": [...]} or a KServe v2 input
    max_explain_texts: int = 64  # per explanation request
    # The characters of the words an explanation request's answer lists, all its texts together: the tokens
    # the model reads after normalisation (explain.answer_chars), not the characters sent ("…" reads as "...",
    # three words). A word has at least one character, so this bounds the answer (ts_properties.max_response_bytes).
    max_explain_chars: int = 40_000
    # A text costs its share of the costliest admissible text (worst_case.py) in proportion to its normalised
    # length, up to all of it from `full_cost_chars` on (v1: max_chars; v2: max_length tokens). The seconds are
    # measured by each worker at start, on its host (worst_case.measure_cost), not shipped in the archive.
    full_cost_chars: int = 10_000
    model_file: str = MODEL_FILE
    onnx_file: str = ONNX_FILE
    vocab_file: str | None = VOCAB_FILE  # v1
    tokenizer_file: str | None = None  # v2: the pretrained model's tokenizer.json
    max_length: int | None = None  # v2: tokens per text, [CLS] and [SEP] included
    head_tokens: int | None = None  # v2: of a longer text, this many tokens from the start, the rest from the end
    inputs: list = field(
        default_factory=lambda: [
            {"name": "ids", "dtype": "int64", "shape": ["n_features"], "doc": "feature ids of all texts, concatenated"},
            {"name": "offsets", "dtype": "int64", "shape": ["batch"], "doc": "start of each text in ids"},
        ]
    )
    outputs: list = field(
        default_factory=lambda: [{"name": "logit", "dtype": "float32", "shape": ["batch"], "doc": "the core's P(positive) = sigmoid(logit); served calibrated (calibration)"}]
    )
    # Platt scaling fitted by export.py on the validation split, {"method": "platt", "slope", "intercept", ...}: the
    # served probability is sigmoid(slope * logit + intercept) of the core's logit (Signature.calibrate). None: the core's own.
    calibration: dict | None = None
    # The test split in the served histograms' bins (drift.reference_distribution): what monitoring compares live traffic with.
    reference: dict = field(default_factory=dict)

    def label(self, probability: float) -> str:
        return self.labels[int(probability >= self.threshold)]

    def calibrate(self, probability: float) -> float:
        """The probability served for the core's `probability` (= sigmoid(logit)): its calibrated value, so that
        of the texts answered p, a share p is positive; the core's own where the signature has no calibration.
        Increasing in the logit, so every ranking (ROC AUC) is the core's. payload.labelled is its one caller."""
        if not self.calibration:
            return probability
        p = min(max(probability, CALIBRATION_CLIP), 1 - CALIBRATION_CLIP)
        z = self.calibration["slope"] * math.log(p / (1 - p)) + self.calibration["intercept"]
        return 1 / (1 + math.exp(-z))

    def save(self, folder: Path) -> None:
        (Path(folder) / SIGNATURE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "Signature":
        fields = json.loads((Path(folder) / SIGNATURE_FILE).read_text())
        fields["labels"] = tuple(fields["labels"])
        if fields["features"] is not None:
            fields["features"] = Features(**fields["features"])
        return cls(**fields)


def load_vocab_index(folder: Path, signature: Signature) -> dict[str, int]:
    vocab = json.loads((Path(folder) / signature.vocab_file).read_text())
    return {gram: i for i, gram in enumerate(vocab)}


def load_encoder(folder: Path, signature: Signature) -> Encoder | WordPieceEncoder:
    """The featuriser this artifact was trained with; both map texts to the core's inputs (`inputs(texts)`)."""
    if signature.architecture == TRANSFORMER:
        return WordPieceEncoder(Path(folder) / signature.tokenizer_file, signature.max_length, signature.head_tokens)
    return Encoder(load_vocab_index(folder, signature), signature.features)
