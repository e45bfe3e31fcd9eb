"""How v2 should read a review longer than it takes (issue 25): accuracy against cost, measured on IMDB validation.

    .venv/bin/python scripts/long_reviews.py    # build/v2/export -> bench/results/long_reviews.json and .png
    .venv/bin/python scripts/long_reviews.py --export build/test-v2/export --size 40 --allow-dirty   # a quick check

A fixed sample (SEED) of IMDB validation reviews, which training never sees (`data.is_imdb_validation`: a hash of
the text; IMDB test is not read, so the choice is not fitted to it), is scored by the served core (runtime.load_core: v2's int8 ONNX Runtime core) on
one thread, as a served worker runs it (model-config-v2.yaml). The strategies, each at 128, 256 and 512 tokens:
head only, tail only, and head + tail (the signature's head share of the budget from the start, the rest from the
end: the served `WordPieceEncoder`); and overlapping windows of WINDOW tokens every STRIDE over the whole review,
their logits pooled by the mean or by the largest |logit| (the surest window's logit, sign kept). Cost: wall time
of featurising and forward per review, BATCH reviews a batch as TorchServe forms them, split into forward passes
by `encoder.chunks` as `core.predict_proba` does (windows: BATCH windows a pass). Accuracy is the core's, at logit
0 (before the calibration map, which export fits to the served strategy alone).
"""

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.provenance import RESULTS, Provenance  # noqa: E402
from scripts import need  # noqa: E402
from sentiment.data import is_imdb_validation, load_imdb  # noqa: E402
from sentiment.serving.runtime import load_core  # noqa: E402
from sentiment.serving.signature import Signature  # noqa: E402
from sentiment.serving.text import WordPieceEncoder  # noqa: E402

SEED = 1  # a draw of its own: training picked its checkpoint on the first 600 of a SPLIT_SEED shuffle of these reviews
BUDGETS = (128, 256, 512)  # tokens, [CLS] and [SEP] included; 512 is the encoder's last position
WINDOW, STRIDE = 256, 192  # tokens a window, [CLS] and [SEP] included, and word pieces between window starts
BATCH = 8  # model-config-v2.yaml's batchSize: reviews a TorchServe batch, and windows a forward pass
WARMUP = 2  # batches scored untimed per strategy first: a core's first passes allocate and (TorchScript) profile
MIN_GAIN = 0.005  # accuracy a costlier strategy must add over the served one (issue 25: half a point)


# Synthetic long reviews, kept for scripts/calibration.py's length-shift set (this script's study before IMDB):
# held-out snippets joined to 1,500-6,000 characters, 60 % of them of the review's label and 40 % of the other.
REVIEWS_PER_LABEL, CHARS, MAJORITY = 100, (1_500, 6_000), 0.6


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


def sample(size: int) -> tuple[list[str], list[int], dict[str, str]]:
    """`size` IMDB validation reviews drawn with SEED (labels as the data give them), and the file's md5."""
    texts, labels, md5 = load_imdb("train")
    rows = [(t, y) for t, y in zip(texts, labels) if is_imdb_validation(t)]
    drawn = random.Random(SEED).sample(rows, min(size, len(rows)))
    return [t for t, _ in drawn], [y for _, y in drawn], md5


def truncated(core, encoder: WordPieceEncoder, texts: list[str]) -> list[torch.Tensor]:
    """The served path (`core.predict_proba` before its sigmoid): each review's logit."""
    logits = torch.empty(len(texts))
    for start in range(0, len(texts), BATCH):
        for positions, inputs in encoder.chunks(texts[start : start + BATCH]):
            logits[[start + p for p in positions]] = core(*inputs)
    return list(logits[:, None])


def window_starts(pieces: int) -> list[int]:
    """Where the windows of a review of `pieces` word pieces start: every STRIDE, the last ending at its end."""
    size = WINDOW - 2
    starts = list(range(0, max(pieces - size, 0) + 1, STRIDE))
    return starts + ([pieces - size] if starts[-1] + size < pieces else [])


def windowed(core, whole: WordPieceEncoder, texts: list[str]) -> list[torch.Tensor]:
    """Each review's window logits, every word piece read; `whole` keeps every word piece of a text."""
    logits = []
    for start in range(0, len(texts), BATCH):
        pieces = [row[1:-1] for row in whole.token_ids(texts[start : start + BATCH])]
        starts = [window_starts(len(p)) for p in pieces]
        rows = [[whole.cls, *p[s : s + WINDOW - 2], whole.sep] for p, ss in zip(pieces, starts) for s in ss]
        scores = torch.cat([core(*whole.padded(rows[s : s + BATCH])) for s in range(0, len(rows), BATCH)])
        logits += scores.split([len(ss) for ss in starts])
    return logits


def timed(score, texts: list[str]) -> tuple[list[torch.Tensor], float]:
    """score(texts) -> per-review logits, and ms a review, after WARMUP untimed batches."""
    with torch.inference_mode():
        score(texts[: WARMUP * BATCH])
        started = time.perf_counter()
        logits = score(texts)
        return logits, 1000 * (time.perf_counter() - started) / len(texts)


def metrics(logits: list[float], labels: list[int], ms: float, tokens: float) -> dict:
    correct = [(z >= 0) == bool(y) for z, y in zip(logits, labels)]
    return {"accuracy": round(sum(correct) / len(labels), 4), "roc_auc": round(float(roc_auc_score(labels, logits)), 4),
            "ms_per_review": round(ms, 1), "tokens_per_review": round(tokens, 1), "correct": correct}


def choice(results: dict, served: str) -> str:
    """Which strategy the accuracy and cost support against the served one: a gain counts when it is at least
    MIN_GAIN and twice its paired standard error (the same reviews, so the s.e. of the difference is small)."""
    def against(name: str) -> tuple[float, float, str]:
        diff = [int(a) - int(b) for a, b in zip(results[name]["correct"], results[served]["correct"])]
        gain = sum(diff) / len(diff)
        se = math.sqrt(sum((d - gain) ** 2 for d in diff) / max(len(diff) - 1, 1) / len(diff))
        ratio = results[name]["ms_per_review"] / results[served]["ms_per_review"]
        return gain, se, f"{name} {100 * gain:+.1f} points (s.e. {100 * se:.1f}) at {ratio:.1f}x its cost"

    best = max(results, key=lambda s: (results[s]["accuracy"], -results[s]["ms_per_review"]))
    gain, se, said = against(best)
    verdict = (f"the numbers support {best}" if best != served and gain >= max(MIN_GAIN, 2 * se)
               else f"keep {served}: nothing beats it by {100 * MIN_GAIN:.1f} point and twice the s.e.")
    windows = "; ".join(against(s)[2] for s in results if s.startswith("windows"))
    most = f"; the most accurate, {said}" if best != served else "; it is the most accurate"
    return (f"{verdict} (served {served}: {results[served]['accuracy']:.3f} at {results[served]['ms_per_review']:.0f} ms a "
            f"review{most}; against it, {windows})")


def plot(results: dict, served: str, n: int, path: Path) -> None:
    """Accuracy against ms a review: colour the strategy, label the budget (or pooling), the served one ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    colors = {"head": "#d9534f", "tail": "#5cb85c", "head+tail": "#2a7ab0", f"windows {WINDOW}/{STRIDE}": "#8e44ad"}
    offsets = {"head": (5, -11), "tail": (-24, 5), "head+tail": (6, 4), "mean": (6, 5), "max-abs": (6, -11)}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, r in results.items():
        family, label = name.rsplit(" ", 1)
        x, y = r["ms_per_review"], r["accuracy"]
        ax.errorbar(x, y, yerr=math.sqrt(y * (1 - y) / n), fmt="o", color=colors[family], capsize=2, elinewidth=0.8,
                    label=family if family not in ax.get_legend_handles_labels()[1] else None)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=offsets.get(label) or offsets[family], fontsize=8)
    ax.plot(results[served]["ms_per_review"], results[served]["accuracy"], "o", ms=14, mfc="none", mec="k",
            label=f"served: {served}")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel("ms per review (featurise + forward, 1 torch thread, log scale)")
    ax.set_ylabel(f"accuracy, IMDB validation (n = {n}; bars ±1 s.e.)")
    ax.set_title("v2 on long reviews: strategy and token budget, accuracy against cost", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, default=ROOT / "build" / "v2" / "export")
    parser.add_argument("--size", type=int, default=600, help="IMDB validation reviews (default %(default)s)")
    parser.add_argument("--allow-dirty", action="store_true", help="measure on an uncommitted tree (results go to bench/results/tmp/)")
    args = parser.parse_args()
    need(args.export / "signature.json", build="make export VERSION=2")
    run = Provenance(allow_dirty=args.allow_dirty)
    torch.set_num_threads(1)

    signature = Signature.load(args.export)
    core = load_core(args.export, signature)  # the served core (runtime.py: v2's int8 ONNX Runtime core), one thread
    tokenizer = args.export / signature.tokenizer_file
    texts, labels, md5 = sample(args.size)
    if signature.metrics.get("imdb_md5", md5) != md5:
        raise SystemExit(f"IMDB train differs from the file {args.export} was trained on (md5): its validation share is not held out")
    share = signature.head_tokens / (signature.max_length - 2)  # of the word pieces kept, from the start
    whole = WordPieceEncoder(tokenizer, sys.maxsize, 0)  # every word piece
    lengths = [len(row) - 2 for row in whole.token_ids(texts)]
    strategies = {}  # name -> (score, word pieces read a review: not timed)
    for budget in BUDGETS:
        for name, head in (("head", budget - 2), ("tail", 0), ("head+tail", round(share * (budget - 2)))):
            encoder = WordPieceEncoder(tokenizer, budget, head)
            strategies[f"{name} {budget}"] = (lambda t, e=encoder: truncated(core, e, t), sum(min(n, budget - 2) for n in lengths))
    strategies["windows"] = (lambda t: windowed(core, whole, t), sum(len(window_starts(n)) * (WINDOW - 2) - max(WINDOW - 2 - n, 0) for n in lengths))

    results = {}
    for name, (score, read) in tqdm(strategies.items(), desc="strategies", unit="strategy"):
        logits, ms = timed(score, texts)
        tokens = read / len(texts)
        if name == "windows":  # one pass scores both poolings: the same cost
            results[f"windows {WINDOW}/{STRIDE} mean"] = metrics([float(z.mean()) for z in logits], labels, ms, tokens)
            results[f"windows {WINDOW}/{STRIDE} max-abs"] = metrics([float(z[z.abs().argmax()]) for z in logits], labels, ms, tokens)
        else:
            results[name] = metrics([float(z) for z in logits], labels, ms, tokens)

    served = f"head+tail {signature.max_length}"
    report = {"provenance": run.record(), "export": str(args.export), "version": signature.version,
              "data": {"source": "IMDB train, the validation share held out of training (data.is_imdb_validation)",
                       "md5": md5, "seed": SEED, "reviews": len(texts), "positive": sum(labels)},
              "word_pieces": {"median": sorted(lengths)[len(lengths) // 2], "max": max(lengths),
                              **{f"share_over_{b}": round(sum(n > b - 2 for n in lengths) / len(lengths), 3) for b in BUDGETS}},
              "threads": 1, "batch": BATCH, "window": WINDOW, "stride": STRIDE, "head_tokens": signature.head_tokens,
              "served": served, "choice": choice(results, served),
              "strategies": {name: {k: v for k, v in r.items() if k != "correct"} for name, r in results.items()}}
    out = run.target(RESULTS / "long_reviews.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(report["strategies"], served, len(texts), out.with_suffix(".png"))
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| strategy | accuracy | ROC AUC | ms a review | word pieces read |\n|---|---:|---:|---:|---:|")
    for name, r in report["strategies"].items():
        print(f"| {name}{' (served)' if name == served else ''} | {r['accuracy']:.3f} | {r['roc_auc']:.3f} | "
              f"{r['ms_per_review']:.0f} | {r['tokens_per_review']:.0f} |")
    print(f"choice: {report['choice']}\n-> {out}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
