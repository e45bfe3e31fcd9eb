"""Record both model versions as README quotes them: offline metrics, training time, artifact sizes,
and each test set scored through a real TorchServe serving the archives: rt-polarity's held-out test
split and IMDB test (Maas et al. 2011), each with accuracy, ROC AUC, log loss and ECE of the served
(calibrated) probabilities, and the accuracy estimated from them without labels (drift.estimated_accuracy).

    .venv/bin/python scripts/record_models.py        # after `make archive` and `make archive VERSION=2`
    .venv/bin/python scripts/record_models.py --versions 1   # v1 alone; v2's entry is carried from models.json

Writes bench/results/models.json (from a clean tree only, like every README-bound results file;
--allow-dirty writes to bench/results/tmp/). A version not measured keeps its previous entry, with
the provenance of the run that measured it (`carried_from`).
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import need  # noqa: E402

need()  # before evaluate's requests

import numpy as np  # noqa: E402
from sklearn.metrics import log_loss, roc_auc_score  # noqa: E402

from sentiment.serving import drift  # noqa: E402
from bench.provenance import RESULTS, Provenance  # noqa: E402
from sentiment.data import held_out_test_split
from sentiment.ops.evaluate import predict_served  # noqa: E402
from sentiment.ops.torchserve import LocalTorchServe  # noqa: E402
from scripts.calibration import ece  # noqa: E402
from sentiment.serving.signature import Signature  # noqa: E402
from sentiment.serving.text import normalized_length_bound  # noqa: E402
from sentiment.data import load_imdb  # noqa: E402

VERSIONS = {"1": "sentiment.mar", "2": "sentiment_v2.mar"}


def megabytes(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 1)


def offline(version: str, mar: str) -> dict:
    build = ROOT / "build" / f"v{version}"
    metrics = json.loads((build / "metrics.json").read_text())
    export = build / "export"
    return {
        "architecture": Signature.load(export).architecture,
        "test": metrics["test"], "validation": metrics["validation"],
        **{k: metrics[k] for k in ("imdb_validation", "vocab_size", "train_size") if k in metrics},
        "train_seconds": metrics["train_seconds"],
        "trained_for": {k: metrics[k] for k in ("best_epoch", "best_step", "steps", "epochs") if k in metrics},
        "artifact_mb": {f.name: megabytes(f) for f in sorted(export.iterdir()) if f.is_file()},
        "archive_mb": megabytes(ROOT / "model_store" / mar),
    }


def served_scores(texts: list[str], labels: list[int], signature: Signature, url: str, version: str) -> dict:
    """Accuracy (of the served labels), ROC AUC, log loss, ECE and the label-free estimated accuracy (of the served
    probabilities) of what `url` serves,
    over the texts within the version's max_chars (the longer ones would be refused: counted in `over_max_chars`)."""
    started = time.perf_counter()
    admissible = [i for i, text in enumerate(texts) if max(len(text), normalized_length_bound(text)) <= signature.max_chars]
    excluded = len(texts) - len(admissible)  # refused 400 text_too_long by this version's limit: counted, not scored
    texts, labels = [texts[i] for i in admissible], [labels[i] for i in admissible]
    predictions, versions = predict_served(texts, signature.max_texts, url, version=version)
    if versions != {signature.version}:
        raise RuntimeError(f"answers came from model version(s) {sorted(versions)}, not {signature.version}")
    p, y = np.array([x["probability"] for x in predictions]), np.array(labels)
    positive = np.array([x["label"] == signature.labels[1] for x in predictions])
    return {"accuracy": round(float(np.mean(positive == y)), 4), "roc_auc": round(float(roc_auc_score(y, p)), 4),
            "log_loss": round(float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1])), 4), "ece": round(ece(p, y), 4),
            "estimated_accuracy": round(drift.estimated_accuracy(p.tolist()), 4), "size": len(y), "over_max_chars": excluded, "seconds": round(time.perf_counter() - started, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--allow-dirty", action="store_true")
    parser.add_argument("--versions", default=",".join(VERSIONS), help="versions to measure (default %(default)s)")
    args = parser.parse_args()
    measured = {version: VERSIONS[version] for version in args.versions.split(",")}
    need(*(ROOT / "build" / f"v{v}" / name for v in measured for name in ("metrics.json", "export/signature.json")),
         *(ROOT / "model_store" / mar for mar in measured.values()), build="make archive && make archive VERSION=2")
    run = Provenance(allow_dirty=args.allow_dirty)

    report = {version: offline(version, mar) for version, mar in measured.items()}
    sets = {"served_test": held_out_test_split(), "served_imdb_test": load_imdb("test")[:2]}
    with LocalTorchServe(ROOT / "model_store", models=",".join(measured.values())) as ts:
        for version in measured:
            signature = Signature.load(ROOT / "build" / f"v{version}" / "export")
            for name, (texts, labels) in sets.items():
                report[version][name] = served_scores(texts, labels, signature, ts.inference, version)
                print(f"v{version} {name}: {report[version][name]}", flush=True)
    out = run.target(RESULTS / "models.json")
    previous = RESULTS / "models.json"
    if previous.exists() and set(measured) != set(VERSIONS):
        before = json.loads(previous.read_text())
        for version in VERSIONS.keys() - measured.keys():
            entry = before["versions"][version]
            report[version] = {**entry, "carried_from": entry.get("carried_from", before["provenance"])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"provenance": run.record(), "versions": dict(sorted(report.items()))}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
