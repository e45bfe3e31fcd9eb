"""The labelled data every trainer, report and evaluation reads, and the one split they share.

Data: the 10,662 rt-polarity snippets and IMDB train (Maas et al. 2011, ../shared/data/imdb/), each
review once (`load_imdb`). Split (deterministic, documented; `subsets`): the snippets in file order
(positive file, then negative), shuffled with random.Random(SPLIT_SEED); first 10 % test, next 10 %
validation, the rest training, exactly as before IMDB was added, so old and new numbers compare. IMDB
train reviews go to training except the share IMDB_VALIDATION that a hash of each text holds out
(`is_imdb_validation`); IMDB test is read only to report (`held_out`). Fresh labels (`--fresh`, CSV or
JSONL, `load_labelled`) never change that split: they go to training, except the share FRESH_HELD_OUT
that a hash of each text holds out (`is_held_out`, never trained on, the same texts whatever else is
added) and any text that repeats a held-out snippet.
"""

import csv
import gzip
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from sentiment.serving.signature import Signature

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "rt-polarity"
IMDB_DIR = DATA_DIR.parent / "imdb"  # Maas et al. 2011, train and test files (its README: format, duplicates)
SPLIT_SEED = 0  # fixed: the held-out test set never changes between versions
TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.1
IMDB_VALIDATION = 0.1  # share of IMDB train held out for validation by a hash of the text (`is_imdb_validation`)
FRESH_HELD_OUT = 0.2  # share of fresh labels held out by a hash of the text: a retrained version's own test set

def load_dataset(data_dir: Path = DATA_DIR) -> tuple[list[str], list[int], dict[str, str]]:
    """Texts, labels (1 positive, 0 negative) and the md5 of each source file."""
    texts, labels, md5 = [], [], {}
    for name, label in (("rt-polarity.pos", 1), ("rt-polarity.neg", 0)):
        raw = (data_dir / name).read_bytes()
        md5[name] = hashlib.md5(raw).hexdigest()
        # Split on "\n" only: str.splitlines() would also break at U+0085. Byte 0x85 is really cp1252's
        # ellipsis (31 snippets): restore it, so it tokenises as a client's "…" does.
        lines = [line.replace("\x85", "\u2026") for line in raw.decode("latin-1").split("\n") if line.strip()]
        texts += lines
        labels += [label] * len(lines)
    return texts, labels, md5


def split(n: int) -> dict[str, list[int]]:
    """Indices of the corpus's test, validation and training rows: fixed by SPLIT_SEED and n alone."""
    order = list(range(n))
    random.Random(SPLIT_SEED).shuffle(order)
    n_test, n_val = int(n * TEST_FRACTION), int(n * VALIDATION_FRACTION)
    return {"test": order[:n_test], "validation": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def text_key(text: str) -> str:
    """A text as the split compares texts: case and runs of whitespace do not make another text."""
    return " ".join(text.casefold().split())


def _hashed_below(text: str, share: float, salt: bytes = b"") -> bool:
    """Whether a hash of the text alone (and a salt) falls in the lowest `share` of its range: the same in every
    run, for every version, whatever other data is added."""
    digest = hashlib.sha256(salt + text_key(text).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def is_held_out(text: str) -> bool:
    """Whether a fresh labelled text is held out: by a hash of the text alone, so a text is on the same
    side in every run, for every version, whatever other data is added."""
    return _hashed_below(text, FRESH_HELD_OUT)


def is_imdb_validation(text: str) -> bool:
    """Whether an IMDB train review is in the IMDB validation set (salted: independent of `is_held_out`)."""
    return _hashed_below(text, IMDB_VALIDATION, b"imdb-validation:")


def load_imdb(part: str, data_dir: Path = IMDB_DIR) -> tuple[list[str], list[int], dict[str, str]]:
    """IMDB "train" or "test": texts, labels and the md5 of the file, each text once (by `text_key`, first kept:
    the data repeat some reviews under other ids). Test reviews that repeat a train review are dropped, so
    the test set is never trained on."""
    name = f"imdb_{part}.jsonl.gz"
    raw = (data_dir / name).read_bytes()
    seen = set()
    if part == "test":
        seen = {text_key(text) for text in load_imdb("train", data_dir)[0]}
    texts, labels = [], []
    for line in filter(None, gzip.decompress(raw).decode("utf-8").split("\n")):  # not splitlines(): texts hold U+2028 and the like
        row = json.loads(line)
        key = text_key(row["text"])
        if key not in seen:
            seen.add(key)
            texts.append(row["text"])
            labels.append(int(row["label"]))
    return texts, labels, {name: hashlib.md5(raw).hexdigest()}


@dataclass
class Fresh:
    """Fresh labelled reviews added to the corpus (`--fresh`), and the md5 of each file they came from."""

    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    md5: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, paths: list[Path]) -> "Fresh":
        """CSV or JSONL files with `text` and `label`, as `load_labelled` reads them."""
        fresh = cls()
        for path in paths:
            texts, labels = load_labelled(path, Signature.labels)
            fresh.texts += texts
            fresh.labels += labels
            fresh.md5[str(path)] = hashlib.md5(path.read_bytes()).hexdigest()
        return fresh


def subsets(texts: list[str], labels: list[int], fresh: Fresh | None = None,
            imdb: tuple[list[str], list[int]] | None = None) -> dict[str, tuple[list[str], list[int]]]:
    """(texts, labels) of "test", "validation", "train", "fresh_test" and "imdb_validation": the one split every
    trainer uses. The corpus (rt-polarity) is split by `split`, unchanged by what is added; fresh rows go to
    training, except the held-out ones (`is_held_out`: "fresh_test"); IMDB train rows too, except those
    `is_imdb_validation` holds out. A row that repeats a held-out corpus text is dropped."""
    parts = {name: ([texts[i] for i in idx], [labels[i] for i in idx]) for name, idx in split(len(texts)).items()}
    corpus_held_out = {text_key(text) for name in ("test", "validation") for text in parts[name][0]}
    parts["fresh_test"], parts["imdb_validation"] = ([], []), ([], [])
    added = [(text, label, "fresh_test" if is_held_out(text) else "train") for text, label in zip(fresh.texts, fresh.labels)] if fresh else []
    added += [(text, label, "imdb_validation" if is_imdb_validation(text) else "train") for text, label in zip(*imdb)] if imdb else []
    for text, label, name in added:
        if name == "train" and text_key(text) in corpus_held_out:
            continue
        parts[name][0].append(text)
        parts[name][1].append(label)
    return parts


def held_out(metrics: dict, part: str = "test") -> tuple[list[str], list[int]]:
    """Texts and labels of a held-out part of the data a model was trained on (its metrics.json; checked by md5):
    "test" (rt-polarity's), "validation" (rt-polarity's, and IMDB's when it trained on IMDB: the mix of short and
    long reviews that calibration is fitted on) or "imdb_test" (reporting only)."""
    texts, labels, md5 = load_dataset(Path(metrics.get("data_dir", DATA_DIR)))
    imdb_dir = Path(metrics.get("imdb_dir", IMDB_DIR))
    imdb = load_imdb("train", imdb_dir) if "imdb_md5" in metrics else None
    for found, recorded in ((md5, metrics["data_md5"]), *(((imdb[2], metrics["imdb_md5"]),) if imdb else ())):
        if found != recorded:
            raise SystemExit(f"the training data has changed since training (md5 {found} != {recorded}): retrain")
    if part == "imdb_test":
        return load_imdb("test", imdb_dir)[:2]
    parts = subsets(texts, labels, imdb=imdb[:2] if imdb else None)
    if part == "validation":
        return parts["validation"][0] + parts["imdb_validation"][0], parts["validation"][1] + parts["imdb_validation"][1]
    return parts[part]


def parse_label(value, labels: tuple[str, str]) -> int:
    """1 for the signature's positive label (its second), 0 for the negative one; also 1/0, true/false."""
    negative, positive = (label.lower() for label in labels)
    values = {"1": 1, "0": 0, "true": 1, "false": 0, positive: 1, negative: 0, positive[:3]: 1, negative[:3]: 0}
    key = str(value).strip().lower()
    if key not in values:
        raise ValueError(f"label {value!r} is not one of 1/0, {positive}/{negative}")
    return values[key]


def load_labelled(path: Path, labels: tuple[str, str], text_column: str = "text", label_column: str = "label") -> tuple[list[str], list[int]]:
    """Texts and 0/1 labels from a CSV (with a header) or JSONL file; `labels` are the signature's names."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    texts, targets = [], []
    for number, row in enumerate(rows, start=1):
        if text_column not in row or label_column not in row:
            raise ValueError(f"{path} row {number}: needs {text_column!r} and {label_column!r}, has {sorted(row)}")
        try:
            targets.append(parse_label(row[label_column], labels))
        except ValueError as error:
            raise ValueError(f"{path} row {number}: {error}") from None
        texts.append(row[text_column])
    if not texts:
        raise ValueError(f"{path} holds no rows")
    return texts, targets


def held_out_test_split() -> tuple[list[str], list[int]]:
    """The held-out test split (fixed SPLIT_SEED): the texts every version was scored on."""
    texts, labels, _ = load_dataset()
    test = split(len(texts))["test"]
    return [texts[i] for i in test], [labels[i] for i in test]


def held_out_rows(texts: list[str], labels: list[int]) -> tuple[list[str], list[int]]:
    """The rows that training with --fresh holds out (`is_held_out`: the same rows for every version)."""
    kept = [i for i, text in enumerate(texts) if is_held_out(text)]
    if not kept:
        raise ValueError(f"none of the {len(texts)} rows is in the held-out share")
    return [texts[i] for i in kept], [labels[i] for i in kept]
