"""Batch scoring throughput: the CLI (sentiment/ops/batch_predict.py) vs Spark local mode (sentiment/ops/spark_predict.py), optionally
a running TorchServe through `sentiment/ops/batch_predict.py --endpoint`, on the same 10,000-row CSV file.

    .venv/bin/python bench/batch_bench.py             # 30-120 s on 2 shared cores (33 s in issue 29's run)
    .venv/bin/python bench/batch_bench.py --http      # also TorchServe (starts its own, free ports)

The file: 10,000 rt-polarity snippets (shuffled with a fixed seed) as id,text,truth, in a
temporary folder removed at the end. Every case reads it and writes Parquet. rows/s is end to end within the process:
model load, read, encode, forward, write (`wall_s` of the CLI adds its interpreter start and imports,
as a fresh `sentiment/ops/batch_predict.py` process pays them). Spark is measured cold (first job of a new session: Python workers start, import torch,
load the model) and warm (the same job again, in the same session, workers and model reused),
with the input spread over every core. Writes bench/results/batch.json with the git commit it came
from (bench/provenance.py: from a dirty tree only with --allow-dirty, into bench/results/tmp/).
"""

import argparse
import csv
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sentiment.ops import batch_predict  # noqa: E402
from bench.provenance import Provenance  # noqa: E402
from sentiment.data import load_dataset  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ROWS = 10_000


def make_input(path: Path, rows: int = ROWS) -> Path:
    texts, labels, _ = load_dataset()
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "truth"])
        writer.writerows((i, texts[i], labels[i]) for i in order[:rows])
    return path


def cli(source: Path) -> dict:
    summary = batch_predict.run(source, source.with_name("cli.parquet"))  # first in this process: includes loading the model
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "sentiment.ops.batch_predict", str(source), str(source.with_name("cli.parquet"))],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return {**summary, "wall_s": round(time.perf_counter() - started, 2), "summary_line": run.stdout.strip()}


def spark(source: Path) -> dict:
    from sentiment.ops import spark_predict

    started = time.perf_counter()
    session = spark_predict.local_session("local[*]")
    session_s = time.perf_counter() - started
    partitions = session.sparkContext.defaultParallelism
    try:
        cold = spark_predict.run(session, str(source), str(source.with_name("spark.parquet")), partitions=partitions)
        warm = spark_predict.run(session, str(source), str(source.with_name("spark.parquet")), partitions=partitions)
    finally:
        session.stop()
    return {"session_start_s": round(session_s, 2), "partitions": partitions, "cold": cold, "warm": warm}


def http(source: Path) -> dict:
    from sentiment.ops.torchserve import LocalTorchServe

    with LocalTorchServe(ROOT / "model_store") as ts:  # the shipped archive and its model-config.yaml
        url = f"{ts.inference}/predictions/sentiment"
        return {"workers": 8, **batch_predict.run(source, source.with_name("http.parquet"), endpoint=url, workers=8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", action="store_true", help="also score through a TorchServe it starts")
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--allow-dirty", action="store_true", help="run from a dirty tree; the results go to bench/results/tmp/")
    args = parser.parse_args()
    run = Provenance(args.allow_dirty)  # refuses a dirty tree now, not after the run
    work = Path(tempfile.mkdtemp(prefix="batch-bench-"))  # the input and the outputs beside it; made after a refusal could come

    try:
        source = make_input(work / f"reviews-{args.rows}.csv", args.rows)
        results = {
            "rows": args.rows,
            "machine": {"cpus": os.cpu_count(), "load_average_before": os.getloadavg(), "python": platform.python_version()},
            "cli": cli(source),
            "spark_local": spark(source),
        }
        if args.http:
            results["http"] = http(source)
        results["machine"]["load_average_after"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["rows_per_s"] = {
        "cli": results["cli"]["rows_per_s"],
        "spark_local_cold": results["spark_local"]["cold"]["rows_per_s"],
        "spark_local_warm": results["spark_local"]["warm"]["rows_per_s"],
    }
    if args.http:
        results["rows_per_s"]["http"] = results["http"]["rows_per_s"]
    results["provenance"] = run.record()
    out = run.target(RESULTS / "batch.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["rows_per_s"], indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
