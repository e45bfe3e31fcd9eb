"""Score a file of reviews on Apache Spark with the exported serving function: batch_predict.score_frame
on every Arrow batch (mapInPandas), the TorchScript core loaded once per Python worker and reused.

    python -m sentiment.ops.spark_predict reviews.csv scored.parquet                    # local[*]
    python -m sentiment.ops.spark_predict reviews.jsonl scored.jsonl --column review --master local[2]

Output: a Spark output folder (part files and _SUCCESS, written through Spark's commit protocol, so a
failed job leaves no _SUCCESS) in the format of OUT's extension (.csv, .jsonl, .parquet), with the
input columns plus probability, label and error, as sentiment/ops/batch_predict.py writes them. Spark readers do
not know line numbers, so `error` says what is wrong but not where. Rows Spark cannot parse (invalid
JSON, a CSV row with the wrong number of fields) are marked bad and keep their raw text in the
extra column _corrupt_record. Spark's JSON reader turns a number in the text field into text (and
scores it) where sentiment/ops/batch_predict.py reports a wrong_type row.

On a cluster (YARN shown; the executors need the Python packages of requirements.txt, shipped here
as a venv-pack archive), the artifact folder and input/output on a filesystem every node can read:

    venv-pack -o env.tar.gz
    zip -r sentiment.zip sentiment -x '*__pycache__*'
    spark-submit --master yarn --deploy-mode cluster \\
        --archives env.tar.gz#env --conf spark.pyspark.python=./env/bin/python \\
        --py-files sentiment.zip \\
        sentiment/ops/spark_predict.py hdfs:///reviews/2024.jsonl hdfs:///reviews/2024-scored.parquet \\
        --artifact hdfs:///models/sentiment/v1/export --master yarn
"""

import argparse
import os
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

from pyspark import SparkFiles
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, StringType, StructField, StructType

from sentiment.ops.batch_predict import DEFAULT_ARTIFACT, ERRORS_SHOWN, OUTPUT_COLUMNS, is_missing, load_core, score_frame, summary_line
from sentiment.serving.signature import Signature

ROOT = Path(__file__).resolve().parents[2]
CORRUPT = "_corrupt_record"  # Spark's column for rows it could not parse: they are marked as bad, never dropped
FORMATS = {".csv": "csv", ".jsonl": "json", ".ndjson": "json", ".parquet": "parquet"}
LOOPBACK = "127.0.0.1"


def check_target(target: str) -> None:
    """Spark writes a folder and replaces what is there: only the folder of an earlier Spark run (its
    _SUCCESS) is replaced, saying so; a file (sentiment/ops/batch_predict.py's output of the same name) or another
    folder is refused."""
    path = Path(target)
    if "://" in target or not path.exists():
        return
    if path.is_dir() and (path / "_SUCCESS").exists():
        print(f"{target}: replacing the output folder of an earlier Spark run", file=sys.stderr)
        return
    kind = "a folder that is no Spark output" if path.is_dir() else "a file"
    raise SystemExit(f"{target} exists and is {kind}; Spark would replace it with its output folder: remove it or choose another OUT")


def local_session(master: str = "local[*]") -> SparkSession:
    """A Spark session whose Python workers run this interpreter (the venv with torch).

    Starting Spark is what changes the process, never importing this module (other modules and the
    tests import it): PYSPARK_PYTHON (and, for a local master, SPARK_LOCAL_IP) is set here, unless
    already set, because SparkContext reads the workers' interpreter (and the address to bind) from it; and PySpark's warning about pandas is silenced from here on: the
    project pins pandas 3, which PySpark 4.3 works with (tests/test_spark.py checks the results) but
    warns about on every call."""
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    builder = SparkSession.builder.master(master).appName("sentiment-batch")
    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # on loopback, like the rest of the project: else Spark binds the host's first non-loopback address
        os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
        builder = builder.config("spark.driver.host", LOOPBACK).config("spark.driver.bindAddress", LOOPBACK)
    spark = (
        builder
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def ship(spark: SparkSession, artifact: str) -> str:
    """Send the sentiment package (a zip: what the executors import) and the export folder to every executor (and
    the driver); the folder's name in SparkFiles."""
    package = Path(tempfile.mkdtemp(prefix="sentiment-spark-")) / "sentiment.zip"
    with zipfile.ZipFile(package, "w") as zipped:
        for path in sorted((ROOT / "sentiment").rglob("*.py")):
            zipped.write(path, path.relative_to(ROOT))
    spark.sparkContext.addPyFile(str(package))
    spark.sparkContext.addFile(str(artifact), recursive=True)  # the same path twice is added once
    return Path(str(artifact).rstrip("/")).name


def score_dataframe(df: DataFrame, artifact: str = str(DEFAULT_ARTIFACT), column: str = "text") -> DataFrame:
    """`df` plus probability, label and error, scored on the executors."""
    folder = ship(df.sparkSession, artifact)
    schema = StructType(df.schema.fields + [
        StructField("probability", DoubleType()), StructField("label", StringType()), StructField("error", StringType()),
    ])

    def score_batches(batches):
        core = load_core(SparkFiles.get(folder))  # cached in the worker process: loaded once, reused by every task
        for batch in batches:
            corrupt = batch[CORRUPT].tolist() if CORRUPT in batch.columns else [None] * len(batch)
            errors = [None if is_missing(c) else "bad_row: Spark could not parse it (see _corrupt_record)" for c in corrupt]
            yield score_frame(batch, core, column, core.signature, errors)

    return df.mapInPandas(score_batches, schema)


CSV_OPTIONS = {"header": True, "multiLine": True, "escape": '"'}  # RFC 4180 like Python's csv: "" escapes a quote


def read(spark: SparkSession, path: str) -> DataFrame:
    """Input rows; those Spark cannot parse come with their raw text in _corrupt_record."""
    kind = FORMATS[Path(path).suffix.lower()]
    if kind == "csv":
        columns = spark.read.options(**CSV_OPTIONS).csv(path).schema.fields  # the header, as strings
        schema = StructType(columns + [StructField(CORRUPT, StringType())])  # rows with too many or too few fields
        return spark.read.options(**CSV_OPTIONS).schema(schema).csv(path)
    if kind == "json":
        return spark.read.json(path, mode="PERMISSIVE", columnNameOfCorruptRecord=CORRUPT)
    return spark.read.parquet(path)


def run(spark: SparkSession, source: str, target: str, column: str = "text", artifact: str = str(DEFAULT_ARTIFACT),
        partitions: int | None = None) -> dict:
    started = time.perf_counter()
    df = read(spark, source)
    if partitions:  # a small or multi-line CSV file is one partition: spread it over the cores (row order is lost)
        df = df.repartition(partitions)
    clash = [name for name in OUTPUT_COLUMNS if name in df.columns]
    if clash:
        raise SystemExit(f"{source}: input already has column(s) {clash}; rename them so nothing is overwritten")
    if column not in df.columns:
        raise SystemExit(f"{source}: no {column!r} column (columns: {df.columns}); use --column")
    kind = FORMATS[Path(target).suffix.lower()]
    options = {"csv": CSV_OPTIONS, "json": {"ignoreNullFields": False}}.get(kind, {})
    score_dataframe(df, artifact, column).write.mode("overwrite").format(kind).options(**options).save(target)

    # counted from what was written; our _corrupt_record column is data there, not Spark's parse-error column
    out = spark.read.format(kind).options(**options, columnNameOfCorruptRecord="_unparsable_output").load(target)
    positive = Signature.load(SparkFiles.get(ship(spark, artifact))).labels[1]
    counts = out.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count("probability").alias("scored"),
        F.count("error").alias("skipped_bad_rows"),
        F.sum((F.col("label") == positive).cast("long")).alias("positives"),
    ).first().asDict()
    for row in out.where(F.col("error").isNotNull()).select("error").limit(ERRORS_SHOWN).collect():
        print(f"{source}: {row.error}", file=sys.stderr)
    seconds = time.perf_counter() - started
    return {**{k: int(v or 0) for k, v in counts.items()}, "seconds": round(seconds, 3),
            "rows_per_s": round(counts["rows"] / seconds, 1), "output": target}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help=".csv, .jsonl/.ndjson or .parquet (file or folder)")
    parser.add_argument("output", help="output folder; its extension picks the format: .csv, .jsonl, .parquet")
    parser.add_argument("--column", default="text", help="the text column / JSON field (default: text)")
    parser.add_argument("--artifact", default=str(DEFAULT_ARTIFACT), help="export folder (default: build/v1/export)")
    parser.add_argument("--master", default="local[*]", help="Spark master (default: local[*])")
    parser.add_argument("--partitions", type=int, help="repartition the input first (default: as Spark reads it)")
    args = parser.parse_args(argv)
    check_target(args.output)
    if "://" not in args.input and not Path(args.input).exists():
        raise SystemExit(f"{args.input}: no such file or folder (samples/ has inputs to try; their columns: docs/batch.md)")

    spark = local_session(args.master)
    try:
        summary = run(spark, args.input, args.output, args.column, args.artifact, args.partitions)
    finally:
        spark.stop()
    print(summary_line(summary))
    return summary


if __name__ == "__main__":
    main()
