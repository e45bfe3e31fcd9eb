"""How v2 should read reviews longer than its max_length: measured, not assumed.

    .venv/bin/python scripts/long_reviews.py            # build/v2/export -> bench/results/long_reviews.json

rt-polarity has only snippets (at most ~70 tokens), so long reviews are built from them: held-out
test snippets joined in random order until a review reaches its drawn length (1,500 to 6,000
characters, ~350 to 1,400 tokens), 60 % of them of the review's label and 40 % of the other, as
a long review argues both sides before its verdict (snippets of one label only are too easy: every
strategy scored 0.995). Each review is scored four ways with
the exported core: the head (first max_length tokens), the tail, head + tail (the shipped
`WordPieceEncoder`, signature.head_tokens from the start and the rest from the end), and the mean
logit of consecutive max_length windows (every token read, at several times the cost).
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.provenance import RESULTS, Provenance  # noqa: E402
from scripts import need  # noqa: E402
from sentiment.serving.signature import Signature  # noqa: E402
from sentiment.serving.text import WordPieceEncoder  # noqa: E402
from sentiment.data import load_dataset
from sentiment.data import split  # noqa: E402

REVIEWS_PER_LABEL = 100
CHARS = (1_500, 6_000)
MAJORITY = 0.6  # of a review's snippets carry its label
SEED = 0
WARMUP = 5  # reviews scored untimed per strategy first: the first measurement ran cold (head 828 ms a review, tail 172)


def long_reviews(texts: list[str], labels: list[int], rng: random.Random) -> tuple[list[str], list[int]]:
    by_label = {0: [t for t, y in zip(texts, labels) if y == 0], 1: [t for t, y in zip(texts, labels) if y == 1]}
    reviews, targets = [], []
    for label in by_label:
        for _ in range(REVIEWS_PER_LABEL):
            target, parts = rng.randint(*CHARS), []
            while sum(map(len, parts)) < target:
                parts.append(rng.choice(by_label[label] if len(parts) % 5 < 5 * MAJORITY else by_label[1 - label]))
            rng.shuffle(parts)
            reviews.append(" ".join(parts))
            targets.append(label)
    return reviews, targets


def score(core, inputs) -> float:
    with torch.inference_mode():
        return core(*inputs).item()


def windows_logit(core, encoder: WordPieceEncoder, text: str) -> float:
    """Mean logit over consecutive windows of max_length - 2 word pieces, each framed by [CLS] ... [SEP]."""
    (encoding,) = encoder.tokenizer.encode_batch([text], add_special_tokens=False)
    size = encoder.max_length - 2
    logits = []
    for start in range(0, len(encoding.ids), size):
        ids = torch.tensor([[encoder.cls, *encoding.ids[start : start + size], encoder.sep]])
        logits.append(score(core, (ids, torch.ones_like(ids))))
    return sum(logits) / len(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, default=ROOT / "build" / "v2" / "export")
    parser.add_argument("--allow-dirty", action="store_true", help="measure on an uncommitted tree (results go to bench/results/tmp/)")
    args = parser.parse_args()
    need(args.artifact / "signature.json", build="make export VERSION=2", modules=())
    torch.set_num_threads(2)
    run = Provenance(allow_dirty=args.allow_dirty)

    signature = Signature.load(args.artifact)
    core = torch.jit.load(str(args.artifact / signature.model_file)).eval()
    tokenizer = args.artifact / signature.tokenizer_file
    texts, labels, _ = load_dataset()
    test = split(len(texts))["test"]
    reviews, targets = long_reviews([texts[i] for i in test], [labels[i] for i in test], random.Random(SEED))

    keep = signature.max_length - 2
    strategies = {
        "head": WordPieceEncoder(tokenizer, signature.max_length, keep),
        "tail": WordPieceEncoder(tokenizer, signature.max_length, 0),
        f"head{signature.head_tokens}+tail{keep - signature.head_tokens} (shipped)": WordPieceEncoder(tokenizer, signature.max_length, signature.head_tokens),
    }
    results = {}
    for encoder in strategies.values():  # untimed: the first passes of a TorchScript core run its profiling executor
        [score(core, encoder.inputs([text])) for text in reviews[:WARMUP]]
    for name, encoder in [*strategies.items(), ("mean of windows", None)]:
        started = time.perf_counter()
        if encoder is None:
            windowed = strategies["head"]
            logits = [windows_logit(core, windowed, text) for text in reviews]
        else:
            logits = [score(core, encoder.inputs([text])) for text in reviews]
        seconds = time.perf_counter() - started
        accuracy = sum((logit >= 0) == bool(y) for logit, y in zip(logits, targets)) / len(targets)
        results[name] = {"accuracy": round(accuracy, 4), "roc_auc": round(float(roc_auc_score(targets, logits)), 4),
                         "ms_per_review": round(1000 * seconds / len(reviews), 1)}
        print(f"{name:32s} accuracy {accuracy:.3f}  AUC {results[name]['roc_auc']:.3f}  {results[name]['ms_per_review']:.0f} ms/review")

    tokens = [len(ids) for ids in strategies["head"].tokenizer.encode_batch(reviews, add_special_tokens=False)]
    report = {"provenance": run.record(), "artifact": str(args.artifact), "reviews": len(reviews),
              "chars": CHARS, "tokens": {"min": min(tokens), "median": sorted(tokens)[len(tokens) // 2], "max": max(tokens)},
              "max_length": signature.max_length, "threads": 2, "strategies": results}
    out = run.target(RESULTS / "long_reviews.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
