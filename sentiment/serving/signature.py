"""The serving contract, in one place: written next to the exported core by export.py and read back
by every consumer (handler, batch scoring, benchmarks), so no limit or label is a scattered literal."""

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sentiment.serving.text import Encoder, Features, WordPieceEncoder

MODEL_NAME = "sentiment"
SIGNATURE_FILE = "signature.json"
MODEL_FILE = "model.pt"
ONNX_FILE = "model.onnx"
INT8_ONNX_FILE = "model.int8.onnx"  # the ONNX core with int8 weights (dynamic quantization: export.quantize)
VOCAB_FILE = "vocab.json"
TOKENIZER_FILE = "tokenizer.json"
NBSVM, TRANSFORMER = "nbsvm", "transformer"  # Signature.architecture: v1, v2
TORCHSCRIPT, ONNXRUNTIME = "torchscript", "onnxruntime"  # Signature.runtime["name"]: what runs the served core (runtime.py)
# Texts a request may hold, per version, written into the signature by export.py. v2's are few: with 2
# workers on 2 cores its forward pass costs ~55 ms a text of max_length tokens and an explanation STEPS + 2
# passes, and a batch (model-config-v2.yaml: batchSize 8) must end well within its responseTimeout.
# Every version takes reviews of up to MAX_CHARS characters (the longest IMDB reviews run to ~14k).
MAX_CHARS = 20_000
LIMITS = {NBSVM: {"max_texts": 64, "max_explain_texts": 64, "max_chars": MAX_CHARS},
          TRANSFORMER: {"max_texts": 16, "max_explain_texts": 1, "max_chars": MAX_CHARS}}
TRANSFORMER_INPUTS = [
    {"name": "input_ids", "dtype": "int64", "shape": ["batch", "length"], "doc": "WordPiece ids, [CLS] ... [SEP], padded with 0"},
    {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "length"], "doc": "1 for a real token, 0 for padding"},
]
# A float32 sigmoid reaches 1.0 for logits above ~16.6: probabilities are clipped to this distance from 0 and 1
# before their logit is taken, by the calibration's fit (export.py) and by every use of it (Signature.calibrate),
# and so are the calibrated probabilities.
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
    # batch_predict, properties (config.properties' sizes) and docs/api.md read them back.
    max_chars: int = MAX_CHARS  # per text, as sent and once normalised
    max_texts: int = 64  # per prediction request in {"texts": [...]} or a KServe v2 input
    max_explain_texts: int = 64  # per explanation request
    # The characters of the words an explanation request's answer lists, all its texts together: the tokens
    # the model reads after normalisation (explain.answer_chars), not the characters sent ("…" reads as "...",
    # three words). A word has at least one character, so this bounds the answer (properties.max_response_bytes).
    max_explain_chars: int = 40_000
    # A text costs its share of the costliest admissible text (sentiment/serving/cost.py) in proportion to its normalised
    # length, up to all of it from `full_cost_chars` on (v1: max_chars; v2: max_length tokens). The seconds are
    # measured by each worker at start, on its host (cost.measure_cost), not shipped in the archive.
    full_cost_chars: int = MAX_CHARS
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
    # What runs the served core (runtime.load_core): {"name": TORCHSCRIPT or ONNXRUNTIME, "file", "precision": "fp32" or
    # "int8"}, and for ONNX Runtime the session options export chose from a measured grid ("intra_op_threads",
    # "graph_optimization_level"). Explanations always differentiate the float32 TorchScript core (model_file).
    runtime: dict = field(default_factory=lambda: {"name": TORCHSCRIPT, "file": MODEL_FILE, "precision": "fp32"})
    # The int8 core's gate (export.quantize): accuracy and AUC of the float32 and the int8 core per test set, and the
    # largest |P(int8) - P(fp32)| seen; None when the served core is not quantized.
    quantization: dict | None = None
    # The map export.py fitted on the validation split (export.fit_calibration), {"method", "slope", "intercept",
    # "length_slope", ...}: the served probability is sigmoid(slope * z + length_slope * z / sqrt(n) + intercept) of the
    # core's logit z and the n tokens the model reads of the text (encoder.lengths). "platt" (exports before issue 25)
    # has no length term. None: the core's own probability.
    calibration: dict | None = None
    # The test split in the served histograms' bins (drift.reference_distribution): what monitoring compares live traffic with.
    reference: dict = field(default_factory=dict)

    def label(self, probability: float) -> str:
        return self.labels[int(probability >= self.threshold)]

    @property
    def reads_lengths(self) -> bool:
        """Whether the calibration reads each text's length (encoder.lengths) besides its probability."""
        return bool(self.calibration and self.calibration.get("length_slope"))

    @property
    def batch_tolerance(self) -> float:
        """How far a text's served probability may move with the texts batched beside it. A float32 core: by
        rounding only. The int8 core quantizes activations with one scale per forward pass (dynamic quantization),
        so a text's answer depends on its batch-mates: export refuses an int8 core whose answers move more with
        them than quantization itself moves them from the float32 core's (quantization["max_batch_difference"]
        against ["max_abs_probability_difference"]), and that is the bound."""
        if self.runtime["precision"] == "int8":
            return self.quantization["max_abs_probability_difference"]
        return 2e-6

    @property
    def explained_core(self) -> dict:
        """What an explanation answer adds when the served core is not the one Integrated Gradients differentiates
        (int8 has no gradients): both cores, so the client knows that `logit` = `base` + the contributions is the
        float32 core's logit while `probability` stays the prediction's own (they differ by at most the
        quantization's max_abs_probability_difference on the test sets)."""
        if self.runtime["name"] == TORCHSCRIPT:
            return {}
        return {"explained_core": f"{TORCHSCRIPT} fp32", "served_core": f"{self.runtime['name']} {self.runtime['precision']}"}

    def calibrate(self, probability: float, length: int | None = None) -> float:
        """The probability served for the core's `probability` (= sigmoid(logit)) of a text the model reads as
        `length` tokens (encoder.lengths): its calibrated value, so that of the texts answered p, a share p is
        positive; the core's own where the signature has no calibration. Increasing in the logit at every
        length (export checks), so texts of one length keep the core's ranking. payload.labelled is its one caller."""
        if not self.calibration:
            return probability
        p = min(max(probability, CALIBRATION_CLIP), 1 - CALIBRATION_CLIP)
        logit = math.log(p / (1 - p))
        z = self.calibration["slope"] * logit + self.calibration["intercept"]
        if self.reads_lengths:
            if length is None:
                raise ValueError("this signature's calibration reads the text's length: pass encoder.lengths(texts)")
            z += self.calibration["length_slope"] * logit / math.sqrt(max(length, 1))
        calibrated = 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))  # no overflow for any z
        return min(max(calibrated, CALIBRATION_CLIP), 1 - CALIBRATION_CLIP)  # never certain: a snippet's slope is ~10

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
