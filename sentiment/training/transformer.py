"""Fine-tune v2, the transformer, on rt-polarity and IMDB and write a checkpoint, its tokenizer and its metrics.

    python -m sentiment.training.transformer --out build/v2            # `make train VERSION=2`: under 60 min on 2 CPU cores (bench/results/models.json)
    python -m sentiment.training.transformer --out /tmp/v2 --max-steps 40 --eval-size 200 --imdb-size 100   # a quick build for tests

Same data, same split (data.subsets: fixed SPLIT_SEED, IMDB validation and fresh labels held out by a
hash of the text) and same test sets as v1, so the numbers compare. What fits in an hour on 2 cores
(1,234 training tokens a second measured with other work on the cores: 46 min): every rt-polarity training snippet SNIPPET_EPOCHS times
(~30 tokens each, cheap) and IMDB_SIZE long training reviews once (256 tokens each, head + tail: ~80 %
of the time), in one shuffled stream under one learning-rate schedule. Starts from all-MiniLM-L6-v2
(sentiment/training/pretrained.py fetches and verifies it), adds mean pooling and a linear head
(core.TransformerClassifier), and fine-tunes everything with AdamW, a linear warm-up and decay.
Validation accuracy (rt-polarity's, and IMDB_EVAL_SIZE of IMDB's) is measured EVALS times; the state with
the best mean of the two is kept.
"""

import argparse
import json
import logging
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from sentiment.training import pretrained
from sentiment.serving.core import TransformerClassifier, TransformerConfig, load_pretrained_encoder
from sentiment.serving.signature import TOKENIZER_FILE
from sentiment.serving.text import WordPieceEncoder
from sentiment.data import DATA_DIR, IMDB_DIR, SPLIT_SEED, Fresh, load_dataset, load_imdb, subsets
from sentiment.training.nbsvm import evaluate, fresh_metrics

MAX_LENGTH = 256  # tokens per text when served, [CLS] and [SEP] included; every rt-polarity snippet fits
HEAD_TOKENS = 64  # of a longer review, the first 64 tokens and the last 190 (see text.WordPieceEncoder)
SNIPPET_EPOCHS = 3  # the rt-polarity-only v2 was best after 2.3 epochs (623 of 801 steps)
IMDB_SIZE = 12_000  # IMDB training reviews (of ~21,500), the first in a SPLIT_SEED shuffle: one pass, ~4/5 of the time
IMDB_EVAL_SIZE = 600  # IMDB validation reviews scored at each evaluation during training (all of them at the end)
BATCH_SIZE = 32
LEARNING_RATE = 1e-4  # a small (22M) model fine-tunes best somewhat above BERT-base's usual 2e-5..5e-5
WEIGHT_DECAY = 0.01
WARMUP_FRACTION = 0.06
EVALS = 6  # validation scores during the run; the best state is kept
THREADS = 2  # both cores: training has the machine to itself

log = logging.getLogger("transformer")


def length_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length texts (less padding: ~1.5x faster), in shuffled order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lengths.__getitem__)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def training_rows(train_part: tuple[list[str], list[int]], imdb_texts: set[str], imdb_size: int) -> tuple[list[str], list[int]]:
    """The stream one run trains on: the rt-polarity (and fresh) training rows SNIPPET_EPOCHS times, and the first
    `imdb_size` IMDB training rows of a SPLIT_SEED shuffle once (a long review costs 10x a snippet)."""
    short = [(t, y) for t, y in zip(*train_part) if t not in imdb_texts]
    long = [(t, y) for t, y in zip(*train_part) if t in imdb_texts]
    random.Random(SPLIT_SEED).shuffle(long)
    rows = short * SNIPPET_EPOCHS + long[:imdb_size]
    return [t for t, _ in rows], [y for _, y in rows]


def mean_accuracy(scores: list[dict]) -> float:
    """Model selection weighs short snippets and long reviews alike, whatever their counts."""
    return sum(s["accuracy"] for s in scores) / len(scores)


def train(texts: list[str], labels: list[int], encoder: WordPieceEncoder, weights: dict, seed: int,
          imdb: tuple[list[str], list[int]] | None, imdb_size: int, max_steps: int | None = None,
          eval_size: int | None = None, fresh: Fresh | None = None) -> tuple[TransformerClassifier, TransformerConfig, dict]:
    subset = subsets(texts, labels, fresh, imdb)
    imdb_texts = set(imdb[0]) if imdb else set()
    train_texts, train_labels = training_rows(subset["train"], imdb_texts, imdb_size)
    validations = [tuple(part[:eval_size] for part in subset["validation"])]
    imdb_validation = list(zip(*subset["imdb_validation"]))
    random.Random(SPLIT_SEED).shuffle(imdb_validation)  # the file is sorted by label: a slice must not be
    imdb_validation = [t for t, _ in imdb_validation], [y for _, y in imdb_validation]
    if imdb:
        validations.append(tuple(part[: min(eval_size or IMDB_EVAL_SIZE, IMDB_EVAL_SIZE)] for part in imdb_validation))

    torch.manual_seed(seed)
    config = TransformerConfig()
    model = TransformerClassifier(config)
    load_pretrained_encoder(model, weights)
    rows = encoder.token_ids(train_texts)
    rng = random.Random(seed)
    steps_per_pass = -(-len(rows) // BATCH_SIZE)
    total = min(max_steps or steps_per_pass, steps_per_pass)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    warmup = max(1, int(total * WARMUP_FRACTION))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / (total - warmup))))
    eval_every = max(1, total // EVALS)
    targets = torch.tensor(train_labels, dtype=torch.float)

    best = {"validation_accuracy": -1.0}
    progress = tqdm(total=total, desc="fine-tuning", unit="step")
    step, tokens, evaluating, started = 0, 0, 0.0, time.perf_counter()
    for batch in length_batches(list(map(len, rows)), BATCH_SIZE, rng):
        model.train()
        input_ids, attention_mask = encoder.padded([rows[i] for i in batch])  # tokenised once, above
        tokens += int(attention_mask.sum())
        loss = F.binary_cross_entropy_with_logits(model(input_ids, attention_mask), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        progress.update()
        if step % eval_every == 0 or step == total:
            model.eval()
            evaluation_started = time.perf_counter()
            scores = [evaluate(model, *part, encoder) for part in validations]
            evaluating += time.perf_counter() - evaluation_started
            progress.set_postfix(loss=f"{loss.item():.3f}", val_acc="/".join(str(v["accuracy"]) for v in scores))
            if mean_accuracy(scores) > best["validation_accuracy"]:
                best = {"validation_accuracy": mean_accuracy(scores), "step": step,
                        "state": {k: v.clone() for k, v in model.state_dict().items()}}
        if step == total:
            break
    progress.close()
    optimizing_seconds = time.perf_counter() - started - evaluating

    model.load_state_dict(best["state"])
    model.eval()
    test = tuple(part[:eval_size] for part in subset["test"])
    metrics = {
        "test": evaluate(model, *test, encoder),
        "validation": evaluate(model, *validations[0], encoder),
        **({"imdb_validation": evaluate(model, *(part[:eval_size] for part in imdb_validation), encoder)} if imdb else {}),
        "train_size": len(train_labels),
        "imdb_train_size": sum(t in imdb_texts for t in train_texts),
        "snippet_epochs": SNIPPET_EPOCHS,
        "best_step": best["step"],
        "steps": total,
        "training_tokens": tokens,
        "training_tokens_per_second": round(tokens / optimizing_seconds),
        "seed": seed,
        "split_seed": SPLIT_SEED,
        **fresh_metrics(fresh, subset, model, encoder),
    }
    return model, config, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--pretrained", type=Path, default=pretrained.DEFAULT_DIR)
    parser.add_argument("--out", type=Path, default=Path("build/v2"))
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--imdb", type=Path, default=IMDB_DIR, help="the IMDB folder (default %(default)s)")
    parser.add_argument("--imdb-size", type=int, default=IMDB_SIZE, help="IMDB training reviews to learn from (default %(default)s; 0: rt-polarity alone)")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (quick builds for tests)")
    parser.add_argument("--eval-size", type=int, help="score only the first N validation and test texts (quick builds)")
    parser.add_argument("--fresh", type=Path, action="append", default=[], help="fresh labelled reviews, CSV or JSONL "
                        "(text, label); repeatable. A hash of each text holds train.FRESH_HELD_OUT of them out of training")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(THREADS)

    started = time.perf_counter()
    weights_file = pretrained.verify(args.pretrained)
    encoder = WordPieceEncoder(args.pretrained / TOKENIZER_FILE, MAX_LENGTH, HEAD_TOKENS)
    texts, labels, md5 = load_dataset(args.data)
    imdb = load_imdb("train", args.imdb) if args.imdb_size else None
    model, config, metrics = train(texts, labels, encoder, load_file(str(weights_file)), args.seed, imdb[:2] if imdb else None,
                                   args.imdb_size, args.max_steps, args.eval_size, Fresh.load(args.fresh) if args.fresh else None)
    metrics.update(train_seconds=round(time.perf_counter() - started, 1), data_md5=md5, data_dir=str(args.data.resolve()),
                   pretrained={"package": pretrained.PACKAGE, "sha256": pretrained.FILES_SHA256})
    if imdb:
        metrics.update(imdb_md5=imdb[2], imdb_dir=str(args.imdb.resolve()))

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"architecture": "transformer", "config": asdict(config), "max_length": MAX_LENGTH, "head_tokens": HEAD_TOKENS,
                "state_dict": model.state_dict()}, args.out / "checkpoint.pt")
    shutil.copyfile(args.pretrained / TOKENIZER_FILE, args.out / TOKENIZER_FILE)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    test = metrics["test"]
    log.info("held-out test accuracy %.4f  ROC AUC %.4f  (n=%d, best step %d of %d, %.1f s)  -> %s",
             test["accuracy"], test["roc_auc"], test["size"], metrics["best_step"], metrics["steps"], metrics["train_seconds"], args.out)


if __name__ == "__main__":
    main()
