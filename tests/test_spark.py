"""sentiment/ops/spark_predict.py: Spark local mode scores a file exactly as the batch CLI does."""

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("pyspark")
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")

from sentiment.ops import batch_predict  # noqa: E402
from sentiment.ops import spark_predict  # noqa: E402
from sentiment.serving.signature import MAX_CHARS  # noqa: E402
from sentiment.data import load_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOT = "(dict(os.environ), [repr(f) for f in warnings.filters])"


def test_importing_spark_predict_changes_nothing_process_wide():
    """Importing spark_predict (tests, bench/batch_bench.py and other modules do) leaves os.environ
    and the warnings filters as they were; only starting Spark (local_session) may change them. Run
    in a fresh interpreter, after importing what spark_predict imports (torch, numpy and pyspark add
    warnings filters of their own), so what is compared is spark_predict's own code."""
    source = (ROOT / "sentiment/ops/spark_predict.py").read_text()
    imports = [ast.get_source_segment(source, node) for node in ast.parse(source).body
               if isinstance(node, (ast.Import, ast.ImportFrom))]
    script = "\n".join([
        "import os, sys, warnings",
        f"sys.path.insert(0, {str(ROOT)!r})",
        *imports,
        f"before = {SNAPSHOT}",
        "import sentiment.ops.spark_predict",
        f"after = {SNAPSHOT}",
        "changed = {k for k in before[0].keys() | after[0].keys() if before[0].get(k) != after[0].get(k)}",
        "added = [f for f in after[1] if f not in before[1]]",
        "print(repr((sorted(changed), added)))",
    ])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    changed, added = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert changed == [], f"importing spark_predict changed os.environ: {changed}"
    assert added == [], f"importing spark_predict added warnings filters: {added}"


@pytest.fixture(scope="module")
def spark():
    session = spark_predict.local_session("local[2]")
    session.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "64")  # several batches per task: the cached core is reused
    yield session
    session.stop()


@pytest.fixture(scope="module")
def reviews(tmp_path_factory):
    """~200 rows with a quoted newline, a doubled quote, and three bad rows."""
    texts = load_dataset()[0][::53][:196] + ['a "fine" film,\nin two lines', "", "   ", "x" * (MAX_CHARS + 1)]
    path = tmp_path_factory.mktemp("spark") / "reviews.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(texts))
    return path


def test_spark_local_gives_the_cli_probabilities(spark, reviews, export_dir, tmp_path):
    cli = batch_predict.run(reviews, tmp_path / "cli.parquet", artifact=export_dir)
    summary = spark_predict.run(spark, str(reviews), str(tmp_path / "spark.parquet"), artifact=str(export_dir))

    expected = pd.read_parquet(tmp_path / "cli.parquet").assign(id=lambda f: f["id"].astype(int)).set_index("id")
    got = pd.read_parquet(tmp_path / "spark.parquet").assign(id=lambda f: f["id"].astype(int)).set_index("id").loc[expected.index]
    assert {k: summary[k] for k in ("rows", "scored", "skipped_bad_rows", "positives")} == \
        {k: cli[k] for k in ("rows", "scored", "skipped_bad_rows", "positives")} == \
        {"rows": 200, "scored": 197, "skipped_bad_rows": 3, "positives": cli["positives"]}
    assert list(got.columns) == ["text", "_corrupt_record", "probability", "label", "error"]
    assert (got["probability"] - expected["probability"]).abs().max() < 1e-6
    assert got["label"].fillna("").tolist() == expected["label"].fillna("").tolist()
    assert got["error"].notna().tolist() == expected["error"].notna().tolist()
    scored = expected["error"].isna()
    assert got["text"][scored].tolist() == expected["text"][scored].tolist()  # quoted newline and "" read alike


def test_spark_marks_unparsable_json_rows(spark, export_dir, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": 1, "text": "a fine film"}) + "\nnot json\n" + json.dumps({"id": 3}) + "\n")
    summary = spark_predict.run(spark, str(source), str(tmp_path / "out.jsonl"), artifact=str(export_dir))
    rows = [json.loads(line) for part in sorted((tmp_path / "out.jsonl").glob("part-*")) for line in part.read_text().splitlines()]
    assert (summary["rows"], summary["scored"], summary["skipped_bad_rows"]) == (3, 1, 2)
    by_raw = {r["_corrupt_record"] or r["id"]: r for r in rows}
    assert by_raw["not json"]["error"].startswith("bad_row") and by_raw["not json"]["probability"] is None
    assert by_raw[3]["error"] == "missing_field: no 'text'"
    assert 0 < by_raw[1]["probability"] < 1 and by_raw[1]["error"] is None
