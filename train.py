"""Train the sentiment classifier on rt-polarity and write a checkpoint, its vocabulary and its metrics.

    python train.py --out build/v1            # 12-30 s on 2 CPU cores (bench/results/models.json: 12 s)

Split (deterministic, documented): the 10,662 snippets in file order (positive file, then negative),
shuffled with random.Random(SPLIT_SEED); first 10 % test, next 10 % validation, the rest training.
The split seed is fixed so every model version is scored on the same held-out test set; `--seed`
only changes initialisation and batch order. The epoch with the best validation accuracy is kept.
"""

import argparse
import hashlib
import json
import logging
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from model_def import ModelConfig, SentimentClassifier, naive_bayes_scale, predict_proba, to_tensors
from text import Encoder, Features, build_vocab

DATA_DIR = Path(__file__).resolve().parent.parent / "shared" / "data" / "rt-polarity"
SPLIT_SEED = 0  # fixed: the held-out test set never changes between versions
TEST_FRACTION = 0.1
VALIDATION_FRACTION = 0.1
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
    order = list(range(n))
    random.Random(SPLIT_SEED).shuffle(order)
    n_test, n_val = int(n * TEST_FRACTION), int(n * VALIDATION_FRACTION)
    return {"test": order[:n_test], "validation": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def evaluate(core, texts: list[str], labels: list[int], encoder: Encoder, threshold: float = 0.5) -> dict:
    probs = predict_proba(core, texts, encoder)
    y = torch.tensor(labels)
    return {
        "accuracy": round(((probs >= threshold).long() == y).float().mean().item(), 4),
        "roc_auc": round(float(roc_auc_score(labels, probs.numpy())), 4),
        "size": len(labels),
    }


def train(texts: list[str], labels: list[int], seed: int, epochs: int = EPOCHS) -> tuple[SentimentClassifier, ModelConfig, list[str], dict]:
    parts = split(len(texts))
    subset = {name: ([texts[i] for i in idx], [labels[i] for i in idx]) for name, idx in parts.items()}
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
    }
    return model, config, vocab, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=Path("build/v1"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    started = time.perf_counter()
    texts, labels, md5 = load_dataset(args.data)
    model, config, vocab, metrics = train(texts, labels, args.seed, args.epochs)
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
