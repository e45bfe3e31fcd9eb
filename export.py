"""Export the trained checkpoint as the serving artifact: the mathematical core and its signature.

    python export.py --checkpoint build/v1 --out build/v1/export --version 1

Writes to --out: model.pt (TorchScript, eval mode, no optimizer or training state), model.onnx
(the same core for ONNX Runtime), vocab.json and signature.json. Before writing the signature it
checks that both exported cores agree with the eager model on the held-out test set.
"""

import argparse
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch

from model_def import ModelConfig, SentimentClassifier, predict_proba, to_tensors
from signature import MODEL_NAME, VOCAB_FILE, Signature
from text import Encoder, Features
from train import load_dataset, split

PARITY_TOLERANCE = 1e-5
log = logging.getLogger("export")


def load_checkpoint(folder: Path) -> tuple[SentimentClassifier, Features]:
    checkpoint = torch.load(folder / "checkpoint.pt", weights_only=True)
    model = SentimentClassifier(ModelConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), Features(**checkpoint["features"])


def export_onnx(model: SentimentClassifier, example: tuple[torch.Tensor, torch.Tensor], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(
            model, example, path, dynamo=False,
            input_names=["ids", "offsets"], output_names=["logit"],
            dynamic_axes={"ids": {0: "n_features"}, "offsets": {0: "batch"}, "logit": {0: "batch"}},
        )


def onnx_predict_proba(path: Path, texts: list[str], encoder: Encoder) -> torch.Tensor:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the Loop that EmbeddingBag exports to draws harmless graph warnings
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ids, offsets = to_tensors(*encoder.batch(texts))
    (logits,) = session.run(None, {"ids": ids.numpy(), "offsets": offsets.numpy()})
    return torch.sigmoid(torch.from_numpy(logits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("build/v1"), help="folder written by train.py")
    parser.add_argument("--out", type=Path, default=Path("build/v1/export"))
    parser.add_argument("--version", default="1")
    parser.add_argument("--name", default=MODEL_NAME)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model, features = load_checkpoint(args.checkpoint)
    metrics = json.loads((args.checkpoint / "metrics.json").read_text())
    vocab = json.loads((args.checkpoint / VOCAB_FILE).read_text())
    encoder = Encoder({gram: i for i, gram in enumerate(vocab)}, features)
    signature = Signature(
        model_name=args.name, version=str(args.version), features=features,
        metrics={k: metrics[k] for k in ("test", "validation", "best_epoch", "seed", "split_seed")},
        data_md5=metrics["data_md5"],
    )

    args.out.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(model)
    scripted.save(str(args.out / signature.model_file))
    export_onnx(model, to_tensors(*encoder.batch(["a fine film", "dull"])), args.out / signature.onnx_file)
    shutil.copyfile(args.checkpoint / VOCAB_FILE, args.out / signature.vocab_file)

    texts, labels, _ = load_dataset()
    test_texts = [texts[i] for i in split(len(texts))["test"]]
    eager = predict_proba(model, test_texts, encoder)
    restored = predict_proba(torch.jit.load(str(args.out / signature.model_file)), test_texts, encoder)
    onnx = onnx_predict_proba(args.out / signature.onnx_file, test_texts, encoder)
    for name, probs in (("torchscript", restored), ("onnx", onnx)):
        diff = (probs - eager).abs().max().item()
        if diff >= PARITY_TOLERANCE:
            raise SystemExit(f"{name} export differs from the eager model by {diff:.2e} on the test set")
        log.info("%s parity on %d test texts: max |diff| %.1e", name, len(test_texts), diff)

    signature.save(args.out)
    size = sum(f.stat().st_size for f in args.out.iterdir())
    test = metrics["test"]
    log.info("exported %s v%s to %s (%.1f MB): held-out test accuracy %.4f, ROC AUC %.4f (n=%d)",
             args.name, args.version, args.out, size / 1e6, test["accuracy"], test["roc_auc"], test["size"])


if __name__ == "__main__":
    main()
