"""Export a trained checkpoint as the serving artifact: the mathematical core and its signature.

    python export.py --checkpoint build/v1 --out build/v1/export --version 1
    python export.py --checkpoint build/v2 --out build/v2/export --version 2     # the transformer

Writes to --out: model.pt (TorchScript, eval mode, no optimizer, dropout or training state),
model.onnx (the same core for ONNX Runtime), for v2 model.int8.onnx (`quantize`: int8 weights by
ONNX Runtime's dynamic quantization), the featuriser's file (vocab.json for v1, tokenizer.json for
v2) and signature.json. Before writing the signature it checks that both exported cores agree with
the eager model on the held-out test set of the data the model was trained on, and that the int8
core moves accuracy and AUC by at most QUANTIZATION_GATE on rt-polarity test and IMDB test (it
refuses to write one that does). The served core is the one RUNTIMES names for the architecture
(--runtime, --precision say otherwise). It then fits the calibration of the served core's
probabilities on the validation split (`fit_calibration`: Platt scaling, with a term for the text's
length where cross-validation prefers it) and records the test split as the served core sees it
(drift.reference_distribution).
"""

import argparse
import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from sentiment.serving.drift import reference_distribution
from sentiment.serving.core import ModelConfig, SentimentClassifier, TransformerClassifier, TransformerConfig, predict_proba
from sentiment.serving.payload import labelled
from sentiment.serving.runtime import OnnxCore, load_core
from sentiment.serving.signature import (CALIBRATION_CLIP, INT8_ONNX_FILE, LIMITS, MODEL_NAME, NBSVM, ONNXRUNTIME, TOKENIZER_FILE, TORCHSCRIPT,
                                         TRANSFORMER, TRANSFORMER_INPUTS, Signature, load_encoder)
from sentiment.serving.text import Features
from sentiment.data import SPLIT_SEED, held_out, load_imdb

PARITY_TOLERANCE = {NBSVM: 1e-5, TRANSFORMER: 1e-4}  # max |probability difference| on the test set
CALIBRATION_METHODS = ("platt", "platt_length")  # the maps fit_calibration chooses from (fit_map)
CALIBRATION_FOLDS, CALIBRATION_SHUFFLES = 5, 5  # its cross-validation within the validation split
# The served runtime and precision per architecture (bench/results/ort_grid.json measured them on 2 cores), and
# the ONNX Runtime session options chosen from that grid.
RUNTIMES = {NBSVM: (TORCHSCRIPT, "fp32"), TRANSFORMER: (ONNXRUNTIME, "int8")}
SESSION_OPTIONS = {"intra_op_threads": 1, "graph_optimization_level": "ORT_ENABLE_ALL"}
QUANTIZATION_GATE = {"accuracy": 0.005, "roc_auc": 0.005}  # the most the int8 core may move either, on either test set
BATCH_PROBE = 32  # texts of each gate set whose answer alone and in batches of 8 (v2's batchSize) export compares
GATE_IMDB_SIZE = 4000  # IMDB test reviews the gate scores (a SPLIT_SEED sample: all 23,678 take ~10 min on 2 cores)
log = logging.getLogger("export")


def load_checkpoint(folder: Path) -> tuple[torch.nn.Module, dict]:
    """The eager model in eval mode, and the checkpoint's other entries (architecture, config, ...)."""
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    checkpoint.setdefault("architecture", NBSVM)
    if checkpoint["architecture"] == TRANSFORMER:
        model = TransformerClassifier(TransformerConfig(**checkpoint["config"]))
    else:
        model = SentimentClassifier(ModelConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint.pop("state_dict"))
    return model.eval(), checkpoint


def make_signature(checkpoint: dict, metrics: dict, name: str, version: str) -> Signature:
    """What the artifact promises its clients, and how to featurise text for it."""
    common = dict(model_name=name, version=str(version), data_md5=metrics["data_md5"],
                  metrics={k: v for k, v in metrics.items() if k not in ("data_md5", "data_dir")})
    common.update(LIMITS[checkpoint["architecture"]])
    if checkpoint["architecture"] == TRANSFORMER:
        return Signature(**common, features=None, architecture=TRANSFORMER, vocab_file=None, tokenizer_file=TOKENIZER_FILE,
                         max_length=checkpoint["max_length"], head_tokens=checkpoint["head_tokens"], inputs=TRANSFORMER_INPUTS,
                         full_cost_chars=checkpoint["max_length"])
    return Signature(**common, features=Features(**checkpoint["features"]))


def export_onnx(model: torch.nn.Module, example: tuple, path: Path, signature: Signature) -> None:
    names = [spec["name"] for spec in signature.inputs]
    dynamic = {spec["name"]: {i: axis for i, axis in enumerate(spec["shape"])} for spec in signature.inputs + signature.outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(model, example, path, dynamo=False, input_names=names,
                          output_names=[spec["name"] for spec in signature.outputs], dynamic_axes=dynamic)


def quantize(folder: Path, signature: Signature) -> Path:
    """model.onnx with int8 weights, one scale per output channel (activations are quantized on the fly, per
    batch): ONNX Runtime's dynamic quantization, what serves small transformers on CPUs. Per channel was both
    closer to float32 and faster than one scale per tensor on v2 (31 against 35 ms a 256-token review, one
    thread). The graph is prepared first (quant_pre_process: shape inference and constant folding)."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    prepared = folder / "model.prepared.onnx"
    quant_pre_process(str(folder / signature.onnx_file), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(folder / INT8_ONNX_FILE), weight_type=QuantType.QInt8, per_channel=True)
    prepared.unlink()
    return folder / INT8_ONNX_FILE


def gate_sets(metrics: dict, imdb_size: int) -> dict[str, tuple[list[str], list[int]]]:
    """The test sets the int8 gate scores: rt-polarity test, and a SPLIT_SEED sample of IMDB test."""
    import random

    imdb = list(zip(*load_imdb("test")[:2]))
    random.Random(SPLIT_SEED).shuffle(imdb)
    imdb = imdb[:imdb_size]
    return {"rt_polarity_test": held_out(metrics, "test"), "imdb_test": ([t for t, _ in imdb], [y for _, y in imdb])}


def quantization_gate(fp32, int8, encoder, sets: dict) -> dict:
    """Accuracy and AUC of both cores per set, and the largest |P(int8) - P(fp32)|; raises SystemExit past
    QUANTIZATION_GATE on any set."""
    from sklearn.metrics import roc_auc_score

    record = {"gate": QUANTIZATION_GATE, "max_abs_probability_difference": 0.0}
    for name, (texts, labels) in sets.items():
        y = np.asarray(labels)
        scores = {}
        for precision, core in (("fp32", fp32), ("int8", int8)):
            p = predict_proba(core, texts, encoder).numpy()
            scores[precision] = {"accuracy": round(float(((p >= 0.5) == y).mean()), 4), "roc_auc": round(float(roc_auc_score(y, p)), 4), "p": p}
        difference = float(np.abs(scores["int8"].pop("p") - scores["fp32"].pop("p")).max())
        record["max_abs_probability_difference"] = round(max(record["max_abs_probability_difference"], difference), 5)
        record[name] = {**scores, "size": len(labels)}
        for metric, limit in QUANTIZATION_GATE.items():
            moved = round(abs(scores["int8"][metric] - scores["fp32"][metric]), 4)  # the scores are rounded to 4 places
            if moved > limit:
                raise SystemExit(f"int8 core refused: {metric} on {name} moved {moved:.4f} (fp32 {scores['fp32'][metric]}, "
                                 f"int8 {scores['int8'][metric]}; the gate allows {limit})")
        log.info("int8 gate on %s (n=%d): accuracy %.4f -> %.4f, AUC %.4f -> %.4f, max |dP| %.4f", name, len(labels),
                 scores["fp32"]["accuracy"], scores["int8"]["accuracy"], scores["fp32"]["roc_auc"], scores["int8"]["roc_auc"], difference)
    record["max_batch_difference"] = batch_difference(int8, encoder, [t for texts, _ in sets.values() for t in texts[:BATCH_PROBE]])
    if record["max_batch_difference"] > record["max_abs_probability_difference"]:
        raise SystemExit(f"int8 core refused: a text's probability moves {record['max_batch_difference']:.4f} with its batch-mates, "
                         f"more than quantization moves it ({record['max_abs_probability_difference']:.4f}; Signature.batch_tolerance)")
    log.info("int8 core: a text's probability moves at most %.4f with its batch-mates (%d texts, batches of %d)",
             record["max_batch_difference"], 2 * BATCH_PROBE, BATCH_PROBE // 4)
    return record


def batch_difference(core, encoder, texts: list[str]) -> float:
    """The largest |P(text in a served-size batch of mixed texts) - P(text alone)|."""
    size = BATCH_PROBE // 4
    batched = torch.cat([predict_proba(core, texts[i : i + size], encoder) for i in range(0, len(texts), size)])
    alone = torch.cat([predict_proba(core, [text], encoder) for text in texts])
    return round(float((batched - alone).abs().max()), 5)


def held_out_texts(metrics: dict) -> list[str]:
    return held_out(metrics)[0]


def calibration_folds(labels: list[int]):
    """(fit, held) row indices: CALIBRATION_FOLDS-fold stratified cross-validation, CALIBRATION_SHUFFLES shuffles."""
    labels = np.asarray(labels)
    for shuffle in range(CALIBRATION_SHUFFLES):
        yield from StratifiedKFold(CALIBRATION_FOLDS, shuffle=True, random_state=shuffle).split(labels, labels)


def fit_map(probabilities: list[float], labels: list[int], lengths: list[int], method: str) -> dict:
    """One map of CALIBRATION_METHODS fitted by maximum likelihood (the label's logistic regression on the
    terms): "platt", sigmoid(slope * z + intercept) of the core's logit z (Platt 1999), or "platt_length",
    which adds length_slope * z / sqrt(n) for a text the model reads as n tokens (encoder.lengths). v1's
    logit sums a term per n-gram, so it grows with the text: one slope leaves 20-word snippets
    underconfident where it fits 230-word reviews; z / sqrt(n) lets the slope fall with the length."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), CALIBRATION_CLIP, 1 - CALIBRATION_CLIP)
    z = np.log(p / (1 - p))
    terms = [z] if method == "platt" else [z, z / np.sqrt(np.maximum(np.asarray(lengths, dtype=np.float64), 1))]
    fit = LogisticRegression(C=np.inf).fit(np.column_stack(terms), labels)
    coefficients = [float(c) for c in fit.coef_[0]]
    return {"method": method, "slope": coefficients[0], "intercept": float(fit.intercept_[0]),
            **({"length_slope": coefficients[1]} if method == "platt_length" else {})}


def increasing(calibration: dict) -> bool:
    """Whether the map increases with the logit at every length n >= 1: slope + length_slope / sqrt(n) > 0."""
    return calibration["slope"] > 0 and calibration["slope"] + calibration.get("length_slope", 0) > 0


def log_loss(probabilities, labels) -> float:
    q, y = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, 1 - 1e-6), np.asarray(labels)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def fit_calibration(probabilities: list[float], labels: list[int], lengths: list[int]) -> dict:
    """The served map, so that a served probability p means "a share p of such texts is positive", as the
    estimated accuracy (sentiment/serving/drift.py) needs: of CALIBRATION_METHODS, the one with the lowest log loss by
    cross-validation within the validation texts (never the test split), refitted on all of them. Both
    are parametric and few-parametered, so they do not overfit a few thousand texts (isotonic regression,
    compared in scripts/calibration.py, does worse), and both increase with the logit at every length."""
    p, y, n = np.asarray(probabilities, dtype=np.float64), np.asarray(labels), np.asarray(lengths)
    cv = {method: [] for method in CALIBRATION_METHODS}
    for fit, held in calibration_folds(labels):
        for method in CALIBRATION_METHODS:
            signature = Signature("", "", None, {}, {}, calibration=fit_map(p[fit], y[fit], n[fit], method))
            cv[method].append(log_loss(labelled(p[held].tolist(), signature, n[held].tolist())[0], y[held]))
    fits = {method: fit_map(p, y, n, method) for method in CALIBRATION_METHODS}
    candidates = [method for method in CALIBRATION_METHODS if increasing(fits[method])]
    if not candidates:
        raise SystemExit(f"calibration slope {fits['platt']['slope']:.3g} <= 0 on the validation split: the model ranks no better than chance")
    chosen = min(candidates, key=lambda method: np.mean(cv[method]))
    return {**fits[chosen], "fitted_on": "validation split", "n": len(labels),
            "cv_log_loss": {method: round(float(np.mean(losses)), 4) for method, losses in cv.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("build/v1"), help="folder written by sentiment/training/nbsvm.py")
    parser.add_argument("--out", type=Path, default=Path("build/v1/export"))
    parser.add_argument("--version", default="1")
    parser.add_argument("--name", default=MODEL_NAME)
    parser.add_argument("--runtime", choices=(TORCHSCRIPT, ONNXRUNTIME), help="the served runtime (default: RUNTIMES' for the architecture)")
    parser.add_argument("--precision", choices=("fp32", "int8"), help="the served precision; int8 is ONNX Runtime's (default: RUNTIMES')")
    parser.add_argument("--gate-size", type=int, default=GATE_IMDB_SIZE, help="IMDB test reviews the int8 gate scores (default %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, checkpoint = load_checkpoint(args.checkpoint)
    metrics = json.loads((args.checkpoint / "metrics.json").read_text())
    signature = make_signature(checkpoint, metrics, args.name, args.version)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / INT8_ONNX_FILE).unlink(missing_ok=True)  # written again below when the served core is int8
    for name in (signature.vocab_file, signature.tokenizer_file):
        if name:
            shutil.copyfile(args.checkpoint / name, args.out / name)
    encoder = load_encoder(args.out, signature)
    torch.jit.script(model).save(str(args.out / signature.model_file))
    export_onnx(model, encoder.inputs(["a fine film", "dull"]), args.out / signature.onnx_file, signature)

    test_texts = held_out_texts(metrics)
    eager = predict_proba(model, test_texts, encoder)
    scripted = torch.jit.load(str(args.out / signature.model_file))  # the core as a worker restores it
    restored = predict_proba(scripted, test_texts, encoder)
    threads = torch.get_num_threads()  # export has the machine; a served worker has its share (SESSION_OPTIONS)
    onnx = predict_proba(OnnxCore(args.out / signature.onnx_file, signature, threads), test_texts, encoder)
    tolerance = PARITY_TOLERANCE[signature.architecture]
    for name, probs in (("torchscript", restored), ("onnx", onnx)):
        diff = (probs - eager).abs().max().item()
        if diff >= tolerance:
            raise SystemExit(f"{name} export differs from the eager model by {diff:.2e} on the test set (tolerance {tolerance:.0e})")
        log.info("%s parity on %d test texts: max |diff| %.1e", name, len(test_texts), diff)

    runtime, precision = RUNTIMES[signature.architecture]
    runtime, precision = args.runtime or runtime, args.precision or precision
    if precision == "int8":
        runtime = ONNXRUNTIME
        int8 = OnnxCore(quantize(args.out, signature), signature, threads)
        signature.quantization = quantization_gate(OnnxCore(args.out / signature.onnx_file, signature, threads),
                                                   int8, encoder, gate_sets(metrics, args.gate_size))
    signature.runtime = {"name": runtime, "precision": precision,
                         "file": {TORCHSCRIPT: signature.model_file, ONNXRUNTIME: INT8_ONNX_FILE if precision == "int8" else signature.onnx_file}[runtime],
                         **(SESSION_OPTIONS if runtime == ONNXRUNTIME else {})}
    served = load_core(args.out, signature, torchscript=scripted, threads=threads)
    validation_texts, validation_labels = held_out(metrics, "validation")
    signature.calibration = fit_calibration(predict_proba(served, validation_texts, encoder).tolist(), validation_labels,
                                            encoder.lengths(validation_texts))
    log.info("calibration on %d validation texts: %s (cross-validated log loss %s)", len(validation_labels),
             {k: signature.calibration[k] for k in ("method", "slope", "length_slope", "intercept") if k in signature.calibration},
             signature.calibration["cv_log_loss"])
    signature.reference = reference_distribution(predict_proba(served, test_texts, encoder).tolist(), test_texts, signature,  # what monitoring compares traffic with
                                                 lengths=encoder.lengths(test_texts))
    signature.save(args.out)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    test = metrics["test"]
    log.info("exported %s v%s to %s (%.1f MB; served: %s %s): held-out test accuracy %.4f, ROC AUC %.4f (n=%d)",
             args.name, args.version, args.out, size / 1e6, runtime, precision, test["accuracy"], test["roc_auc"], test["size"])


if __name__ == "__main__":
    main()
