"""Train the sentiment classifier on rt-polarity and write a checkpoint, its vocabulary and its metrics.

    python train.py --out build/v1            # 12-30 s on 2 CPU cores (bench/results/models.json: 12 s)

    python train.py --out build/v3 --fresh fresh.csv   # + fresh labelled reviews (columns text, label)

Split (deterministic, documented; `subsets`, shared with train_transformer.py): the 10,662 snippets
in file order (positive file, then negative), shuffled with random.Random(SPLIT_SEED); first 10 %
test, next 10 % validation, the rest training. The split seed is fixed so every model version is
scored on the same held-out test set; `--seed` only changes initialisation and batch order. Fresh
labels (`--fresh`, CSV or JSONL as evaluate.py reads them) never change that split: they go to
training, except the share FRESH_HELD_OUT that a hash of each text holds out (`fresh_test`, never
trained on, the same texts whatever else is added) and any text that repeats a held-out snippet.
`python evaluate.py --data fresh.csv --held-out` scores a served version on exactly that share.
The epoch with the best validation accuracy is kept.
"""

import argparse
import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from model_def import ModelConfig, SentimentClassifier, naive_bayes_scale, predict_proba, to_tensors
from signature import Signature
from text import Encoder, Features, build_vocab

DATA_DIR = Path(__file__).resolve().parent.parent / "shared" / "data" / "rt-polarity"
SPLIT_SEED = 0  # fixed: the held-out test set never changes between versions
TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.1
FRESH_HELD_OUT = 0.2  # share of fresh labels held out by a hash of the text: a retrained version's own test set
FEATURES = Features(word_ngram=2, char_low=2, char_high=5)  # see text.Features
MIN_COUNT = 1  # keep every n-gram seen in training; unseen ones are dropped at encode time
EPOCHS = 15  # upper bound; the epoch with the best validation accuracy is kept
BATCH_SIZE = 32
LEARNING_RATE = 1e-3

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


def is_held_out(text: str) -> bool:
    """Whether a fresh labelled text is held out: by a hash of the text alone, so a text is on the same
    side in every run, for every version, whatever other data is added."""
    digest = hashlib.sha256(text_key(text).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") < FRESH_HELD_OUT * 2**64


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


def subsets(texts: list[str], labels: list[int], fresh: Fresh | None = None) -> dict[str, tuple[list[str], list[int]]]:
    """(texts, labels) of "test", "validation", "train" and "fresh_test": the one split every trainer uses.
    The corpus is split by `split`, unchanged by what is added; fresh rows go to training, except the
    held-out ones (`is_held_out`: "fresh_test") and any that repeats a held-out corpus text."""
    parts = {name: ([texts[i] for i in idx], [labels[i] for i in idx]) for name, idx in split(len(texts)).items()}
    corpus_held_out = {text_key(text) for name in ("test", "validation") for text in parts[name][0]}
    parts["fresh_test"] = ([], [])
    for text, label in zip(fresh.texts, fresh.labels) if fresh else ():
        if is_held_out(text):
            target = parts["fresh_test"]
        elif text_key(text) in corpus_held_out:
            continue
        else:
            target = parts["train"]
        target[0].append(text)
        target[1].append(label)
    return parts


def fresh_metrics(fresh: Fresh | None, subset: dict, model, encoder) -> dict:
    """Where the fresh rows went, and the held-out ones' scores; nothing without fresh rows."""
    if fresh is None:
        return {}
    held_out = subset["fresh_test"]
    return {"fresh": {"files_md5": fresh.md5, "rows": len(fresh.labels), "held_out": len(held_out[1]), "held_out_share": FRESH_HELD_OUT},
            **({"fresh_test": evaluate(model, *held_out, encoder)} if held_out[1] else {})}


def evaluate(core, texts: list[str], labels: list[int], encoder: Encoder, threshold: float = 0.5) -> dict:
    probs = predict_proba(core, texts, encoder)
    y = torch.tensor(labels)
    return {
        "accuracy": round(((probs >= threshold).long() == y).float().mean().item(), 4),
        "roc_auc": round(float(roc_auc_score(labels, probs.numpy())), 4) if len(set(labels)) == 2 else None,
        "size": len(labels),
    }


def train(texts: list[str], labels: list[int], seed: int, epochs: int = EPOCHS,
          fresh: Fresh | None = None) -> tuple[SentimentClassifier, ModelConfig, list[str], dict]:
    subset = subsets(texts, labels, fresh)
    train_texts, train_labels = subset["train"]

    vocab = build_vocab(train_texts, FEATURES, MIN_COUNT)
    encoder = Encoder({gram: i for i, gram in enumerate(vocab)}, FEATURES)
    bags = [encoder(text) for text in train_texts]
    config = ModelConfig(vocab_size=len(vocab))

    torch.set_num_threads(1)  # the ops are tiny: extra threads only spin and contend (10x slower on 2 busy cores)
    torch.manual_seed(seed)
    model = SentimentClassifier(config, naive_bayes_scale(bags, train_labels, len(vocab)))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    targets = torch.tensor(train_labels, dtype=torch.float)
    order_rng = torch.Generator().manual_seed(seed)

    best = {"validation_accuracy": -1.0}
    progress = tqdm(range(1, epochs + 1), desc="training", unit="epoch")
    for epoch in progress:
        model.train()
        order = torch.randperm(len(bags), generator=order_rng).tolist()
        for start in range(0, len(order), BATCH_SIZE):
            chosen = order[start : start + BATCH_SIZE]
            ids, offsets = [], []
            for i in chosen:
                offsets.append(len(ids))
                ids += bags[i]
            loss = F.binary_cross_entropy_with_logits(model(*to_tensors(ids, offsets)), targets[chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        val = evaluate(model, *subset["validation"], encoder)
        progress.set_postfix(loss=f"{loss.item():.3f}", val_acc=val["accuracy"], val_auc=val["roc_auc"])
        if val["accuracy"] > best["validation_accuracy"]:
            best = {"validation_accuracy": val["accuracy"], "epoch": epoch, "state": {k: v.clone() for k, v in model.state_dict().items()}}

    model.load_state_dict(best["state"])
    model.eval()
    metrics = {
        "test": evaluate(model, *subset["test"], encoder),
        "validation": evaluate(model, *subset["validation"], encoder),
        "train_size": len(train_labels),
        "best_epoch": best["epoch"],
        "seed": seed,
        "split_seed": SPLIT_SEED,
        **fresh_metrics(fresh, subset, model, encoder),
    }
    return model, config, vocab, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=Path("build/v1"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--fresh", type=Path, action="append", default=[], help="fresh labelled reviews, CSV or JSONL "
                        "(text, label); repeatable. A hash of each text holds FRESH_HELD_OUT of them out of training")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    started = time.perf_counter()
    texts, labels, md5 = load_dataset(args.data)
    model, config, vocab, metrics = train(texts, labels, args.seed, args.epochs, Fresh.load(args.fresh) if args.fresh else None)
    metrics.update(train_seconds=round(time.perf_counter() - started, 1), data_md5=md5, data_dir=str(args.data.resolve()))

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(config), "features": asdict(FEATURES), "state_dict": model.state_dict()}, args.out / "checkpoint.pt")
    (args.out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    test = metrics["test"]
    log.info("held-out test accuracy %.4f  ROC AUC %.4f  (n=%d, best epoch %d, %.1f s)  -> %s",
             test["accuracy"], test["roc_auc"], test["size"], metrics["best_epoch"], metrics["train_seconds"], args.out)


if __name__ == "__main__":
    main()
