"""Text normalisation and encoding: the one copy used by training, export, the handler and batch scoring.

The training data (rt-polarity) is already lower-cased and tokenised with punctuation split off;
real client text is not. `tokenize` maps both to the same token stream, so the served model
sees exactly what it was trained on.
"""

import html
import re
import unicodedata
from collections import Counter
from typing import Iterable, Sequence

_TAG = re.compile(r"<[^>]*>")
# A word keeps inner apostrophes and hyphens ("he's", "co-writer"); any other symbol is a token of its own.
_TOKEN = re.compile(r"\w+(?:['\-]\w+)*|[^\w\s]")
_APOSTROPHES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u00b4": "'", "`": "'"})


def normalize(text: str) -> str:
    """Unicode NFKC, HTML entities and tags (reviews carry `<br />`) removed, accents dropped, lower case."""
    text = html.unescape(_TAG.sub(" ", text))
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text))


def ngrams(tokens: Sequence[str], n: int) -> list[str]:
    """Unigrams up to n-grams, n-grams joined by a space (which no token contains)."""
    grams = list(tokens)
    for size in range(2, n + 1):
        grams += [" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)]
    return grams


def build_vocab(texts: Iterable[str], ngram: int, min_count: int) -> list[str]:
    """Features seen at least `min_count` times, most frequent first (ties alphabetical, so deterministic)."""
    counts = Counter(g for text in texts for g in ngrams(tokenize(text), ngram))
    kept = [g for g, c in counts.items() if c >= min_count]
    return sorted(kept, key=lambda g: (-counts[g], g))


def encode(text: str, index: dict[str, int], ngram: int) -> list[int]:
    """Feature ids of one text; features outside the vocabulary are dropped (an empty bag scores the bias)."""
    return [index[g] for g in ngrams(tokenize(text), ngram) if g in index]


def encode_batch(texts: Sequence[str], index: dict[str, int], ngram: int) -> tuple[list[int], list[int]]:
    """Flat ids and start offsets for `nn.EmbeddingBag`: one bag per text, in order."""
    ids: list[int] = []
    offsets: list[int] = []
    for text in texts:
        offsets.append(len(ids))
        ids.extend(encode(text, index, ngram))
    return ids, offsets
