"""Record both model versions as README quotes them: offline metrics, training time, artifact sizes,
and the same held-out test split scored through a real TorchServe serving both archives.

    .venv/bin/python scripts/record_models.py        # after `make archive` and `make archive VERSION=2`

Writes bench/results/models.json (from a clean tree only, like every README-bound results file;
--allow-dirty writes to bench/results/tmp/).
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts import need  # noqa: E402

need()  # before evaluate's requests

from bench.provenance import RESULTS, Provenance  # noqa: E402
from evaluate import evaluate_served, held_out_test_split  # noqa: E402
from local_server import LocalTorchServe  # noqa: E402
from signature import Signature  # noqa: E402

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
        "train_seconds": metrics["train_seconds"],
        "trained_for": {k: metrics[k] for k in ("best_epoch", "best_step", "steps", "epochs") if k in metrics},
        "artifact_mb": {f.name: megabytes(f) for f in sorted(export.iterdir()) if f.is_file()},
        "archive_mb": megabytes(ROOT / "model_store" / mar),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--allow-dirty", action="store_true")
    args = parser.parse_args()
    need(*(ROOT / "build" / f"v{v}" / name for v in VERSIONS for name in ("metrics.json", "export/signature.json")),
         *(ROOT / "model_store" / mar for mar in VERSIONS.values()), build="make archive && make archive VERSION=2")
    run = Provenance(allow_dirty=args.allow_dirty)

    report = {version: offline(version, mar) for version, mar in VERSIONS.items()}
    texts, labels = held_out_test_split()
    with LocalTorchServe(ROOT / "model_store", models=",".join(VERSIONS.values())) as ts:
        for version in VERSIONS:
            signature = Signature.load(ROOT / "build" / f"v{version}" / "export")
            served = evaluate_served(texts, labels, signature, ts.inference, version=version)
            report[version]["served_test"] = {k: served[k] for k in ("accuracy", "roc_auc", "size", "seconds")}
            print(f"v{version}: offline {report[version]['test']}  served {report[version]['served_test']}")
    out = run.target(RESULTS / "models.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"provenance": run.record(), "versions": report}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
