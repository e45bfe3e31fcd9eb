"""Score a file of reviews with the exported serving function: same core, same encoding, same checks.

    python -m sentiment.ops.batch_predict reviews.csv scored.parquet                  # --column text, --artifact build/v1/export
    python -m sentiment.ops.batch_predict reviews.jsonl scored.jsonl --column review
    python -m sentiment.ops.batch_predict reviews.csv scored.csv --endpoint http://127.0.0.1:8080/predictions/sentiment
    python -m sentiment.ops.batch_predict reviews.csv explained.jsonl --explain 5      # + the 5 words that pushed most each way

Input: .csv (with a header), .jsonl/.ndjson (one JSON object a line) or .parquet. Output, chosen by
its extension (.csv, .jsonl, .parquet): every input row in input order, plus `probability`, `label`
and `error`. A row that cannot be scored (bad CSV row, invalid JSON, missing/non-string/empty text,
text over signature.max_chars, a null byte, a lone surrogate: the checks the HTTP endpoint makes) keeps
empty probability and label, and says why, with its line number, in `error` and on stderr; it is never
dropped. A lone surrogate (JSON's "\\ud800") is written as its backslash escape (UNENCODABLE below).
The output is written to a temporary file in the same folder and renamed into place at the end, so
OUT is either the complete result or what it was before. The whole file is held in memory: files
that don't fit go to sentiment/ops/spark_predict.py, which runs `score_frame` below on each Arrow batch.

`--explain K` adds `positive_words` and `negative_words`: the K words (occurrences summed) with the
largest contributions towards each label, as lists of {"word", "contribution"} (JSON text in a CSV),
from the explanations the endpoint serves (sentiment/serving/explain.py; with --endpoint, its /explanations/ twin).
v1 explains ~1,000 rows a second; v2 (Integrated Gradients) takes 0.1-4 s a row.

`--endpoint` asks the server which version it serves (one probe request), then scores with that
version's signature and limits, from build/v<N>/export or --artifact (refused if it is another version).
"""

import argparse
import csv
import dataclasses
import json
import logging
import math
import os
import re
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sentiment.serving.core import predict_proba
from sentiment.serving import runtime
from sentiment.serving.payload import BadRequest, answer_chars, check_text, labelled
from sentiment.serving.signature import SIGNATURE_FILE, Signature, load_encoder

BUILD = Path(__file__).resolve().parents[2] / "build"
DEFAULT_ARTIFACT = BUILD / "v1" / "export"  # local scoring; --endpoint: the served version's build/v<N>/export
OUTPUT_COLUMNS = ("probability", "label", "error")
EXPLANATION_COLUMNS = ("positive_words", "negative_words")  # with --explain K
BATCH_SIZE = 4096  # texts per scoring call (and progress step); core.predict_proba splits them per model
ERRORS_SHOWN = 100  # bad rows listed on stderr; all of them are marked in the output
PROBE = "Which model version answers?"  # --endpoint's first request: the served version decides the signature
RETRIES, RETRY_SECONDS = 5, 0.5  # --endpoint: a 503 ("retry") is retried after 0.5, 1, 2, 4, 8 s
# A lone UTF-16 surrogate (what json.loads makes of "\ud800") is no Unicode character: UTF-8 cannot
# hold it. Its row is marked (payload.check_text: lone_surrogate), and every output writes it as its
# backslash escape: in JSONL that is JSON's own escape (the text reads back as it came in), in CSV and
# Parquet the six characters `\ud800`. The row's other columns are kept as they are.
UNENCODABLE = "backslashreplace"

log = logging.getLogger("batch_predict")


class Core:
    """The exported core (either version, the runtime its signature names) as `texts -> probabilities`, with its
    signature and featuriser."""

    def __init__(self, artifact: Path):
        artifact = Path(artifact)
        self.signature = Signature.load(artifact)
        self.encoder = load_encoder(artifact, self.signature)
        self.artifact = artifact
        self.core = runtime.load_core(artifact, self.signature)
        self.explainer = None

    def __call__(self, texts: list[str]) -> list[float]:
        return predict_proba(self.core, texts, self.encoder).tolist()

    def lengths(self, texts: list[str]) -> list[int]:
        """What the calibration reads of each text besides its probability (payload.labelled)."""
        return self.encoder.lengths(texts)

    def explain(self, texts: list[str]) -> list[list[dict]]:
        """Each text's words with their contributions, as the explanations endpoint answers them."""
        if self.explainer is None:
            from sentiment.serving.explain import explainer_for  # only --explain needs it (Spark workers ship without it)

            self.explainer = explainer_for(runtime.load_torchscript(self.artifact, self.signature), self.encoder, self.signature)
        return [self.explainer(text).as_dict()["tokens"] for text in texts]


@lru_cache(maxsize=4)
def load_core(artifact: str) -> Core:
    """One Core per artifact per process: a Spark Python worker loads it once and reuses it for every batch."""
    return Core(Path(artifact))


class Endpoint:
    """A running TorchServe as `texts -> probabilities`: {"texts": [...]} requests, in parallel, within the
    limits of the version it serves. Which version that is, the server says: the first request (PROBE)
    reads it from the answer, and its signature (labels, threshold, max_texts, max_chars, what an
    explanation request may hold) is that version's own export, never another's. Every later answer
    must come from the same version: an unversioned URL is pinned to the version the probe answered
    (`.../predictions/sentiment` -> `.../predictions/sentiment/2`), so a default switched mid-run changes
    nothing for this run, and an answer from another version still stops it."""

    def __init__(self, url: str, artifact: Path | None = None, workers: int = 4, timeout: float = 60.0):
        self.url, self.workers, self.timeout = url, workers, timeout
        self.local = threading.local()  # one HTTP session (kept-alive connection) per thread
        version = str(self.request(url, [PROBE]).get("model_version"))
        signature = served_signature(url, version, artifact)
        if re.fullmatch(r".*/(predictions|explanations)/[^/]+", url.rstrip("/")):
            self.url = f"{url.rstrip('/')}/{version}"
        # The server answers calibrated probabilities already: score_frame labels them without calibrating again.
        self.signature = dataclasses.replace(signature, calibration=None)

    def session(self):
        if not hasattr(self.local, "session"):
            import requests  # only this mode needs it

            self.local.session = requests.Session()
        return self.local.session

    def request(self, url: str, texts: list[str]):
        """The answer's JSON. A 503 is the server's "retry" (its batch's time budget was spent): retried
        with backoff; any other error stops the run with the server's message."""
        for attempt in range(RETRIES + 1):
            response = self.session().post(url, json={"texts": texts}, timeout=self.timeout)
            if response.status_code != 503 or attempt == RETRIES:
                break
            time.sleep(RETRY_SECONDS * 2**attempt)
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}")
        return response.json()

    def check_version(self, answer: dict) -> None:
        if str(answer.get("model_version")) != self.signature.version:
            raise RuntimeError(f"{self.url} answered as model version {answer.get('model_version')}, but this run scores with "
                               f"version {self.signature.version} (the default version changed?): name the version in the URL, "
                               f"e.g. .../predictions/<model>/{self.signature.version}")

    def post(self, texts: list[str]) -> list[float]:
        answer = self.request(self.url, texts)
        self.check_version(answer)
        return [p["probability"] for p in answer["predictions"]]

    def __call__(self, texts: list[str]) -> list[float]:
        with ThreadPoolExecutor(self.workers) as pool:
            return [p for chunk in pool.map(self.post, chunks(texts, self.signature.max_texts)) for p in chunk]

    def post_explain(self, texts: list[str]) -> list[list[dict]]:
        answers = self.request(self.url.replace("/predictions/", "/explanations/", 1), texts)
        for answer in answers:
            self.check_version(answer)
        return [answer["tokens"] for answer in answers]

    def explain(self, texts: list[str]) -> list[list[dict]]:
        """The server's explanations, in requests of as many texts and characters as the served version
        explains at once (Signature.max_explain_texts, and max_explain_chars of payload.answer_chars)."""
        if "/predictions/" not in self.url:
            raise SystemExit(f"--explain with --endpoint needs a .../predictions/<model> URL (its /explanations/ twin is asked), got {self.url}")
        requests = chunks(texts, self.signature.max_explain_texts, self.signature.max_explain_chars, answer_chars)
        with ThreadPoolExecutor(self.workers) as pool:
            return [tokens for chunk in pool.map(self.post_explain, requests) for tokens in chunk]


def chunks(texts: list[str], size: int, max_chars: int | None = None, length=len) -> list[list[str]]:
    """`texts` in order, in requests of at most `size` texts and `max_chars` of their `length` together (or
    of one text, which a request may always hold: Signature.max_chars is below max_explain_chars)."""
    out, chars = [], 0
    for text in texts:
        if not out or len(out[-1]) == size or (max_chars is not None and chars + length(text) > max_chars):
            out.append([])
            chars = 0
        out[-1].append(text)
        chars += length(text)
    return out


def served_signature(url: str, version: str, artifact: Path | None = None) -> Signature:
    """The signature of `version`, the one `url` serves: `artifact`'s if it is that version (refused if
    not), by default build/v<version>/export's."""
    folder = Path(artifact) if artifact else BUILD / f"v{version}" / "export"
    if not (folder / SIGNATURE_FILE).exists():
        raise SystemExit(f"{url} serves model version {version}, but {folder} has no {SIGNATURE_FILE}: "
                         f"pass --artifact with version {version}'s export folder")
    signature = Signature.load(folder)
    if signature.version != version:
        raise SystemExit(f"{url} serves model version {version}, but {folder} is version {signature.version}: pass --artifact "
                         f"with version {version}'s export folder, or ask for version {signature.version} (.../predictions/<model>/{signature.version})")
    return signature


def row_error(value, column: str, signature: Signature) -> str | None:
    """Why this text cannot be scored (None if it can): the endpoint's own checks (payload.check_text)."""
    if is_missing(value):
        return f"missing_field: no {column!r}"
    try:
        check_text(value, column, signature)
    except BadRequest as error:
        return f"{error.kind}: {error}"
    return None


def score_frame(frame: pd.DataFrame, score, column: str, signature: Signature, errors: list | None = None,
                explain: int = 0) -> pd.DataFrame:
    """`frame` plus probability, label and error. `score` maps texts to probabilities (Core, Endpoint);
    `errors` holds problems found while reading (None where there was none). Shared with sentiment/ops/spark_predict.py.
    `explain` > 0 adds EXPLANATION_COLUMNS, the top `explain` words each way (`score.explain`)."""
    values = frame[column].tolist() if column in frame.columns else [None] * len(frame)
    errors = [error or row_error(value, column, signature) for error, value in zip(errors or [None] * len(frame), values)]
    good = [i for i, error in enumerate(errors) if error is None]
    probabilities = [math.nan] * len(frame)
    labels = [None] * len(frame)
    # Rounded and labelled exactly as the endpoint answers (payload.labelled), so a text gets the same label online and offline.
    texts = [values[i] for i in good]
    lengths = score.lengths(texts) if signature.reads_lengths else None
    for i, p, label in zip(good, *labelled(score(texts), signature, lengths)):
        probabilities[i], labels[i] = p, label
    out = frame.copy()
    out["probability"] = pd.Series(probabilities, index=frame.index, dtype="float64")
    out["label"] = pd.Series(labels, index=frame.index, dtype=object)
    out["error"] = pd.Series(errors, index=frame.index, dtype=object)
    if explain:
        from sentiment.serving.explain import top_words

        words = {name: [None] * len(frame) for name in EXPLANATION_COLUMNS}
        for i, tokens in zip(good, score.explain([values[i] for i in good])):
            words["positive_words"][i], words["negative_words"][i] = top_words(tokens, explain)
        for name, column_values in words.items():
            out[name] = pd.Series(column_values, index=frame.index, dtype=object)
    return out


# ---- reading: rows, where each row is in the file, and what was wrong with it while reading


def read_csv(path: Path) -> tuple[pd.DataFrame, list[str], list[str | None]]:
    csv.field_size_limit(2**31 - 1)  # long texts are reported as too long, not a crash of the whole file
    records, where, errors = [], [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        line = reader.line_num + 1
        for fields in reader:
            if fields:  # a blank line is no row
                records.append(dict(zip(header, fields)))
                where.append(f"line {line}")
                errors.append(None if len(fields) == len(header) else f"bad_csv_row: {len(fields)} fields, the header has {len(header)}")
            line = reader.line_num + 1
    return pd.DataFrame(records, columns=header, dtype=object), where, errors


def read_jsonl(path: Path) -> tuple[pd.DataFrame, list[str], list[str | None]]:
    records, where, errors = [], [], []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():  # a blank line is no row
                continue
            record, error = {}, None
            try:
                record = json.loads(raw)
            except ValueError as e:  # invalid JSON or invalid UTF-8
                error = f"invalid_json: {e}"
            if not isinstance(record, dict):
                record, error = {}, f"wrong_type: a line must be a JSON object, got {type(record).__name__}"
            records.append(record)
            where.append(f"line {number}")
            errors.append(error)
    return pd.DataFrame(records, dtype=object), where, errors


def read_parquet(path: Path) -> tuple[pd.DataFrame, list[str], list[str | None]]:
    frame = pd.read_parquet(path)
    return frame, [f"row {i}" for i in range(1, len(frame) + 1)], [None] * len(frame)


READERS = {".csv": read_csv, ".jsonl": read_jsonl, ".ndjson": read_jsonl, ".parquet": read_parquet}


# ---- writing: to a temporary file next to the output, renamed into place once it is complete


def write_csv(frame: pd.DataFrame, path: str) -> None:
    frame = frame.copy()
    for name in EXPLANATION_COLUMNS:  # lists of {"word", "contribution"}: as JSON text, not Python's repr
        if name in frame.columns:
            frame[name] = [None if v is None else json.dumps(v, ensure_ascii=False) for v in frame[name]]
    frame.to_csv(path, index=False, errors=UNENCODABLE)


def write_jsonl(frame: pd.DataFrame, path: str) -> None:
    """json, not DataFrame.to_json: full float precision and values as they came in (ints stay ints).
    A lone surrogate can only be inside a JSON string, where its backslash escape is JSON's own: the
    line reads back as the very string that came in."""
    with open(path, "w", encoding="utf-8", errors=UNENCODABLE) as f:
        for record in frame.to_dict("records"):
            record = {k: None if is_missing(v) else v for k, v in record.items()}
            f.write(json.dumps(record, ensure_ascii=False, default=plain) + "\n")


def write_parquet(frame: pd.DataFrame, path: str) -> None:
    columns = {}
    for name in frame.columns:
        values = [utf8(v) for v in frame[name]] if frame[name].dtype == object else frame[name]
        try:
            columns[utf8(name)] = pa.array(values, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeEncodeError):
            # mixed types (a JSON field that is a number in one row, text in another), or a lone surrogate
            # inside a JSON object or list: as JSON text (ASCII, surrogates escaped)
            columns[utf8(name)] = pa.array([None if is_missing(v) else v if isinstance(v, str) else json.dumps(v, default=plain)
                                            for v in values], pa.string())
    pq.write_table(pa.table(columns), path)


def utf8(value):
    """A string as UTF-8 can hold it: a lone surrogate (JSON input's "\\ud800") as its escape, the six
    characters `\\ud800`, as in CSV output. Anything else as it is."""
    return value.encode("utf-8", UNENCODABLE).decode("utf-8") if isinstance(value, str) else value


def is_missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def plain(value):
    """numpy scalars and arrays (from Parquet input) as Python values, anything else as text."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


WRITERS = {".csv": write_csv, ".jsonl": write_jsonl, ".ndjson": write_jsonl, ".parquet": write_parquet}


def write_atomic(frame: pd.DataFrame, path: Path) -> None:
    writer = WRITERS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        writer(frame, str(temporary))
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def format_of(path: Path, table: dict) -> str:
    suffix = path.suffix.lower()
    if suffix not in table:
        raise SystemExit(f"{path}: unsupported extension {suffix or '(none)'!r}, use one of {', '.join(table)}")
    return suffix


def run(source: Path, target: Path, column: str = "text", artifact: Path | None = None,
        batch_size: int = BATCH_SIZE, endpoint: str | None = None, workers: int = 4, explain: int = 0) -> dict:
    """Score `source` into `target` (with `explain` > 0, the top words each way too); returns the summary.
    `artifact` is the export folder: by default build/v1/export, or with `endpoint` the served version's."""
    source, target = Path(source), Path(target)
    read, _ = READERS[format_of(source, READERS)], format_of(target, WRITERS)
    if not source.exists():
        raise SystemExit(f"{source}: no such file (samples/ has inputs to try; their columns: docs/batch.md)")
    if not endpoint and not (Path(artifact or DEFAULT_ARTIFACT) / SIGNATURE_FILE).exists():
        raise SystemExit(f"{artifact or DEFAULT_ARTIFACT}: no {SIGNATURE_FILE}; `make export` (VERSION=N) writes it")
    started = time.perf_counter()
    score = Endpoint(endpoint, artifact, workers) if endpoint else load_core(str(artifact or DEFAULT_ARTIFACT))
    signature = score.signature

    frame, where, errors = read(source)
    clash = [name for name in OUTPUT_COLUMNS + (EXPLANATION_COLUMNS if explain else ()) if name in frame.columns]
    if clash:
        raise SystemExit(f"{source}: input already has column(s) {clash}; rename them so nothing is overwritten")
    if len(frame) and column not in frame.columns:
        raise SystemExit(f"{source}: no row has a {column!r} field (columns: {list(frame.columns)}); use --column")

    parts = []
    with tqdm(total=len(frame), unit="row", desc="scoring", file=sys.stderr) as progress:
        for start in range(0, len(frame), batch_size):
            stop = min(start + batch_size, len(frame))
            parts.append(score_frame(frame.iloc[start:stop], score, column, signature, errors[start:stop], explain))
            progress.update(stop - start)
    out = pd.concat(parts) if parts else score_frame(frame, score, column, signature, explain=explain)

    bad = out["error"].notna().to_numpy()
    for i in bad.nonzero()[0][:ERRORS_SHOWN]:
        log.warning("%s %s: %s", source, where[i], out["error"].iat[i])
    if bad.sum() > ERRORS_SHOWN:
        log.warning("... and %d more bad rows: see the error column of %s", bad.sum() - ERRORS_SHOWN, target)
    out["error"] = [f"{w}: {e}" if b else None for w, e, b in zip(where, out["error"], bad)]

    write_atomic(out, target)
    seconds = time.perf_counter() - started
    summary = {
        "rows": len(out),
        "scored": int((~bad).sum()),
        "skipped_bad_rows": int(bad.sum()),
        "positives": int((out["label"] == signature.labels[1]).sum()),
        "seconds": round(seconds, 3),
        "rows_per_s": round(len(out) / seconds, 1),
        "output": str(target),
    }
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help=".csv, .jsonl/.ndjson or .parquet")
    parser.add_argument("output", type=Path, help=".csv, .jsonl/.ndjson or .parquet (written atomically)")
    parser.add_argument("--column", default="text", help="the text column / JSON field (default: text)")
    parser.add_argument("--artifact", type=Path, help="export folder (default: build/v1/export; with --endpoint, "
                        "build/v<N>/export of the version N the server answers with, which --artifact must be)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="texts per forward pass")
    parser.add_argument("--endpoint", help="score on a running TorchServe instead, e.g. http://127.0.0.1:8080/predictions/sentiment")
    parser.add_argument("--workers", type=int, default=4, help="parallel requests in --endpoint mode")
    parser.add_argument("--explain", type=int, default=0, metavar="K",
                        help="add the K words that pushed most towards each label (positive_words, negative_words)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    summary = run(args.input, args.output, args.column, args.artifact, args.batch_size, args.endpoint, args.workers, args.explain)
    print(summary_line(summary))
    return summary


def summary_line(summary: dict) -> str:
    return (
        f"rows {summary['rows']}  scored {summary['scored']}  skipped bad rows {summary['skipped_bad_rows']}  "
        f"positives {summary['positives']}  {summary['rows_per_s']:.0f} rows/s ({summary['seconds']:.2f} s)  -> {summary['output']}"
    )


if __name__ == "__main__":
    main()
