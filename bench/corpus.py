"""Request bodies for the benchmark, from the rt-polarity reviews as train.load_dataset reads them
(the one loader: it splits on "\\n" only and restores the 31 cp1252 ellipses that str.splitlines()
would cut in two at U+0085).

    short  snippets of exactly SHORT_WORDS words (26: a typical snippet is 20), in a fixed random order
    long   reviews of about LONG_CHARS characters: snippets of one polarity joined, cut at a word boundary
    mix    the realistic mix: single snippets, and a share of long reviews of 5-40 snippets of one
           polarity joined (cut at the signature's max_chars), in a fixed random order

Each kind is a list of distinct texts that the load generator cycles through, so no server can
answer from a cache of one body.
"""

import json
import random
import statistics
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))
from sentiment.data import load_dataset  # noqa: E402

COUNT, LONG_FRACTION, SEED = 2000, 0.2, 0
SHORT_WORDS, LONG_CHARS, LONG_COUNT = 26, 1000, 500


def by_label() -> dict[int, list[str]]:
    """The snippets of each label (1 positive, 0 negative), in file order."""
    texts, labels, _ = load_dataset()
    pools = {0: [], 1: []}
    for text, label in zip(texts, labels):
        pools[label].append(text)
    return pools


def stats(texts: list[str]) -> dict:
    chars = sorted(len(t) for t in texts)
    n = len(chars)
    return {"count": n, "chars": {"mean": round(statistics.mean(chars), 1), "p50": chars[n // 2], "p90": chars[int(n * 0.9)],
                                  "max": chars[-1], "min": chars[0]},
            "body_bytes_mean": round(statistics.mean(len(json.dumps({"text": t}).encode()) for t in texts), 1)}


def short(words: int = SHORT_WORDS, seed: int = SEED) -> tuple[list[str], dict]:
    """Every snippet of exactly `words` words, shuffled."""
    pools = by_label()
    chosen = [t for t in pools[1] + pools[0] if len(t.split()) == words]
    random.Random(seed).shuffle(chosen)
    return chosen, {"source": f"train.load_dataset: every snippet of {words} words", "seed": seed, **stats(chosen)}


def long(chars: int = LONG_CHARS, n: int = LONG_COUNT, seed: int = SEED) -> tuple[list[str], dict]:
    """Reviews of snippets of one polarity joined until they pass `chars` characters, then cut at
    the last word boundary within `chars`."""
    rng = random.Random(seed)
    pools = by_label()
    chosen = []
    for _ in range(n):
        pool, review = pools[rng.choice((0, 1))], ""
        while len(review) <= chars:
            review = f"{review} {rng.choice(pool)}".strip()
        chosen.append(review[: chars + 1].rsplit(" ", 1)[0])
    return chosen, {"source": f"train.load_dataset: snippets of one polarity joined, cut at a word boundary within {chars} characters",
                    "seed": seed, **stats(chosen)}


def mix(max_chars: int, n: int = COUNT, long_fraction: float = LONG_FRACTION, seed: int = SEED) -> tuple[list[str], dict]:
    """Texts of the realistic mix, and their description."""
    rng = random.Random(seed)
    pools = by_label()
    snippets = pools[1] + pools[0]
    chosen = []
    for _ in range(n):
        if rng.random() < long_fraction:
            pool = pools[rng.choice((0, 1))]
            chosen.append(" ".join(rng.sample(pool, rng.randint(5, 40)))[:max_chars])
        else:
            chosen.append(rng.choice(snippets))
    return chosen, {"source": "train.load_dataset: single snippets, and long reviews of 5-40 snippets of one polarity joined",
                    "long_fraction": long_fraction, "seed": seed, **stats(chosen)}


def json_bodies(texts: list[str]) -> list[str]:
    """The request bodies: {"text": ...} for each text."""
    return [json.dumps({"text": t}) for t in texts]
