"""Train the sentiment classifier (v1, NBSVM) on rt-polarity and IMDB; write a checkpoint, its vocabulary and its metrics.

    python train.py --out build/v1            # ~1 min on 2 CPU cores (bench/results/models.json)

    python train.py --out build/v3 --fresh fresh.csv   # + fresh labelled reviews (columns text, label)

Data: the 10,662 rt-polarity snippets and IMDB train (Maas et al. 2011, ../shared/data/imdb/), each
review once (`load_imdb`). Split (deterministic, documented; `subsets`, shared with train_transformer.py):
the snippets in file order (positive file, then negative), shuffled with random.Random(SPLIT_SEED);
first 10 % test, next 10 % validation, the rest training, exactly as before IMDB was added, so old
and new numbers compare. IMDB train reviews go to training except the share IMDB_VALIDATION that a
hash of each text holds out (`is_imdb_validation`); IMDB test is read only to report (`held_out`).
Fresh labels (`--fresh`, CSV or JSONL as evaluate.py reads them) never change that split: they go to
training, except the share FRESH_HELD_OUT that a hash of each text holds out (`fresh_test`, never
trained on, the same texts whatever else is added) and any text that repeats a held-out snippet.
`python evaluate.py --data fresh.csv --held-out` scores a served version on exactly that share.

The model: the MAX_VOCAB most frequent word 1-2-grams and character 2-5-grams, each count scaled by
its naive-Bayes log-count ratio, then an L2-penalised logistic regression fitted by full-batch
L-BFGS (Wang & Manning 2012's NBSVM with a logistic loss); its weights and bias load into
model_def.SentimentClassifier, the core that is exported and served.
"""

import argparse
import gzip
import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.metrics import log_loss, roc_auc_score
from tqdm import tqdm

from model_def import ModelConfig, SentimentClassifier, naive_bayes_scale, predict_proba
from signature import Signature
from text import Encoder, Features, build_vocab

DATA_DIR = Path(__file__).resolve().parent.parent / "shared" / "data" / "rt-polarity"
IMDB_DIR = DATA_DIR.parent / "imdb"  # Maas et al. 2011, train and test files (its README: format, duplicates)
SPLIT_SEED = 0  # fixed: the held-out test set never changes between versions
TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.1
IMDB_VALIDATION = 0.1  # share of IMDB train held out for validation by a hash of the text (`is_imdb_validation`)
FRESH_HELD_OUT = 0.2  # share of fresh labels held out by a hash of the text: a retrained version's own test set
FEATURES = Features(word_ngram=2, char_low=2, char_high=5)  # see text.Features
MIN_COUNT = 2  # an n-gram seen once in training gets a weight from one text: noise
MAX_VOCAB = 200_000  # the most frequent features: bounds the archive and a worker's memory; on validation 200k, 400k and
# all 592k seen twice score alike (rt 0.800 / 0.801 / 0.802, IMDB 0.909 / 0.911 / 0.910 at L2 1e-3, docs/models.md)
L2 = 1e-3  # the weights' L2 penalty, chosen on the validation sets at 400k features (rt / IMDB accuracy: 1e-6 0.781 / 0.885,
# 1e-5 0.791 / 0.890, 1e-4 0.795 / 0.902, 3e-4 0.800 / 0.905, 1e-3 0.801 / 0.911, 3e-3 0.796 / 0.905)
MAX_ITER = 100  # L-BFGS steps at most (it stops earlier once converged)

log = logging.getLogger("train")

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
        """CSV or JSONL files with `text` and `label`, as evaluate.py reads them."""
        from evaluate import load_labelled

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


def fresh_metrics(fresh: Fresh | None, subset: dict, model, encoder) -> dict:
    """Where the fresh rows went, and the held-out ones' scores; nothing without fresh rows."""
    if fresh is None:
        return {}
    held_out = subset["fresh_test"]
    return {"fresh": {"files_md5": fresh.md5, "rows": len(fresh.labels), "held_out": len(held_out[1]), "held_out_share": FRESH_HELD_OUT},
            **({"fresh_test": evaluate(model, *held_out, encoder)} if held_out[1] else {})}


def evaluate(core, texts: list[str], labels: list[int], encoder, threshold: float = 0.5) -> dict:
    """Accuracy, ROC AUC and log loss of the core's own sigmoid(logit) (before calibration), rounded to 4 places."""
    probs = predict_proba(core, texts, encoder)
    y = torch.tensor(labels)
    return {
        "accuracy": round(((probs >= threshold).long() == y).float().mean().item(), 4),
        "roc_auc": round(float(roc_auc_score(labels, probs.numpy())), 4) if len(set(labels)) == 2 else None,
        "log_loss": round(float(log_loss(labels, probs.double().clamp(1e-7, 1 - 1e-7).numpy(), labels=[0, 1])), 4),
        "size": len(labels),
    }


def bag_matrix(encoder: Encoder, texts: list[str], desc: str) -> sparse.csr_matrix:
    """Texts x features, each feature's count in the text: what the core's EmbeddingBag sums, as a matrix."""
    indptr, indices, counts = [0], [], []
    for text in tqdm(texts, desc=desc, unit="text", mininterval=2):
        ids, n = np.unique(np.array(encoder(text), dtype=np.int32), return_counts=True)
        indices.append(ids)
        counts.append(n.astype(np.float32))
        indptr.append(indptr[-1] + len(ids))
    empty = [np.zeros(0, np.int32)]
    return sparse.csr_matrix((np.concatenate(counts or empty).astype(np.float32), np.concatenate(indices or empty), np.array(indptr)),
                             shape=(len(texts), len(encoder.index)))


def fit_weights(features: sparse.csr_matrix, labels: list[int], l2: float = L2, max_iter: int = MAX_ITER) -> tuple[np.ndarray, float]:
    """The NBSVM's per-feature weights and bias: logistic regression on the naive-Bayes-scaled counts, L2-penalised,
    fitted by full-batch L-BFGS (deterministic: no seed, no batch order)."""
    y = np.asarray(labels, dtype=np.float64)
    n, d = features.shape
    transposed = features.T.tocsr()

    def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:d], params[d]
        z = features @ w.astype(np.float32) + b
        loss = float(np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * w @ w)
        residual = (expit(z) - y) / n
        return loss, np.concatenate([transposed @ residual.astype(np.float32) + l2 * w, [residual.sum()]])

    progress = tqdm(total=max_iter, desc="fitting (L-BFGS)", unit="step", mininterval=2)
    fit = minimize(loss_and_grad, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": max_iter},
                   callback=lambda _: progress.update())
    progress.close()
    return fit.x[:d], float(fit.x[d])


def train(texts: list[str], labels: list[int], seed: int, fresh: Fresh | None = None,
          imdb: tuple[list[str], list[int]] | None = None) -> tuple[SentimentClassifier, ModelConfig, list[str], dict]:
    """The NBSVM on the training rows of `subsets` (rt-polarity, fresh labels, IMDB train when given). `seed` is
    recorded only: the fit is deterministic."""
    subset = subsets(texts, labels, fresh, imdb)
    train_texts, train_labels = subset["train"]

    vocab = build_vocab(tqdm(train_texts, desc="vocabulary", unit="text", mininterval=2), FEATURES, MIN_COUNT, MAX_VOCAB)
    encoder = Encoder({gram: i for i, gram in enumerate(vocab)}, FEATURES)
    counts = bag_matrix(encoder, train_texts, "features")
    scale = naive_bayes_scale(counts, train_labels)
    scaled = counts @ sparse.diags(scale.numpy())  # each count times its feature's NB scale: the EmbeddingBag's per-sample weight
    weight, bias = fit_weights(scaled.tocsr(), train_labels)

    config = ModelConfig(vocab_size=len(vocab))
    model = SentimentClassifier(config, scale)
    with torch.no_grad():
        model.weight.weight[:, 0] = torch.from_numpy(weight)
        model.bias[0] = bias
    model.eval()
    metrics = {
        "test": evaluate(model, *subset["test"], encoder),
        "validation": evaluate(model, *subset["validation"], encoder),
        **({"imdb_validation": evaluate(model, *subset["imdb_validation"], encoder)} if imdb else {}),
        "train_size": len(train_labels),
        "vocab_size": len(vocab),
        "seed": seed,
        "split_seed": SPLIT_SEED,
        **fresh_metrics(fresh, subset, model, encoder),
    }
    return model, config, vocab, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--imdb", type=Path, default=IMDB_DIR, help="the IMDB folder (default %(default)s)")
    parser.add_argument("--no-imdb", action="store_true", help="rt-polarity alone, as v1 was trained before issue 25")
    parser.add_argument("--out", type=Path, default=Path("build/v1"))
    parser.add_argument("--seed", type=int, default=1, help="recorded (every trainer takes one); the fit has no randomness")
    parser.add_argument("--fresh", type=Path, action="append", default=[], help="fresh labelled reviews, CSV or JSONL "
                        "(text, label); repeatable. A hash of each text holds FRESH_HELD_OUT of them out of training")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    started = time.perf_counter()
    texts, labels, md5 = load_dataset(args.data)
    imdb = None if args.no_imdb else load_imdb("train", args.imdb)
    model, config, vocab, metrics = train(texts, labels, args.seed, Fresh.load(args.fresh) if args.fresh else None,
                                          imdb[:2] if imdb else None)
    metrics.update(train_seconds=round(time.perf_counter() - started, 1), data_md5=md5, data_dir=str(args.data.resolve()))
    if imdb:
        metrics.update(imdb_md5=imdb[2], imdb_dir=str(args.imdb.resolve()))

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(config), "features": asdict(FEATURES), "state_dict": model.state_dict()}, args.out / "checkpoint.pt")
    (args.out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name in ("test", "validation", "imdb_validation"):
        if name in metrics:
            log.info("%-16s accuracy %.4f  ROC AUC %.4f  log loss %.4f  (n=%d)", name, metrics[name]["accuracy"],
                     metrics[name]["roc_auc"], metrics[name]["log_loss"], metrics[name]["size"])
    log.info("%d features, %.1f s -> %s", len(vocab), metrics["train_seconds"], args.out)


if __name__ == "__main__":
    main()
