"""Text normalisation and encoding: the one copy used by training, export, the handler and batch scoring.

The training data (rt-polarity) is already lower-cased and tokenised with punctuation split off;
real client text is not. `tokenize` maps both to the same token stream, so the served model
sees exactly what it was trained on.
"""

import html
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

_TAG = re.compile(r"</?[a-zA-Z][^<>]*>")  # a tag, not any "<3 ... >" in prose
# A word keeps inner apostrophes and hyphens ("he's", "co-writer"); any other symbol is a token of its own.
_TOKEN = re.compile(r"\w+(?:['\-]\w+)*|[^\w\s]")
_APOSTROPHES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u00b4": "'", "`": "'"})


def normalize(text: str) -> str:
    """Unicode NFKC, HTML entities and tags (reviews carry `<br />`) removed, accents dropped, lower case."""
    text = html.unescape(_TAG.sub(" ", text)).translate(_APOSTROPHES)  # before NFKD splits "´" into space + accent
    if text.isascii():  # the Unicode steps would change nothing, and most reviews are ASCII
        return text.lower()
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


def char_ngrams(tokens: Sequence[str], low: int, high: int) -> list[str]:
    """Character low..high-grams inside each space-padded word, prefixed "c:" (no word feature has a ":" in a word)."""
    return [gram for token in tokens for gram in _word_char_ngrams(token, low, high)]


def _word_char_ngrams(token: str, low: int, high: int) -> tuple[str, ...]:
    padded = f" {token} "
    return tuple("c:" + padded[i : i + size] for size in range(low, high + 1) for i in range(len(padded) - size + 1))


@dataclass(frozen=True)
class Features:
    """What a text is turned into: word 1..word_ngram-grams plus character char_low..char_high-grams.
    Character n-grams let rare and misspelt words share weight with known ones (+2 points held-out accuracy)."""

    word_ngram: int = 2
    char_low: int = 2
    char_high: int = 5

    def __call__(self, text: str) -> list[str]:
        tokens = tokenize(text)
        return ngrams(tokens, self.word_ngram) + char_ngrams(tokens, self.char_low, self.char_high)


def build_vocab(texts: Iterable[str], features: Features, min_count: int) -> list[str]:
    """Features seen at least `min_count` times, most frequent first (ties alphabetical, so deterministic)."""
    counts = Counter(g for text in texts for g in features(text))
    kept = [g for g, c in counts.items() if c >= min_count]
    return sorted(kept, key=lambda g: (-counts[g], g))


class Encoder:
    """Text -> feature ids for one vocabulary: `ids = Encoder(index, features)(text)`.

    Build it once (per worker, per training run, per batch job) and keep it: it caches each word's
    character n-gram ids, because words repeat (Zipf) and looking those n-grams up one by one was
    most of the encoding time. The ids are those of `features(text)` that the vocabulary knows, in
    the same order; unknown features are dropped (an empty bag scores the bias)."""

    def __init__(self, index: dict[str, int], features: Features):
        self.index, self.features = index, features
        self._char_ids = lru_cache(maxsize=1 << 17)(self._word_char_ids)

    def _word_char_ids(self, token: str) -> tuple[int, ...]:
        grams = _word_char_ngrams(token, self.features.char_low, self.features.char_high)
        return tuple(i for i in map(self.index.get, grams) if i is not None)

    def __call__(self, text: str) -> list[int]:
        tokens = tokenize(text)
        ids = [i for i in map(self.index.get, ngrams(tokens, self.features.word_ngram)) if i is not None]
        for token in tokens:
            ids.extend(self._char_ids(token))
        return ids

    def batch(self, texts: Sequence[str]) -> tuple[list[int], list[int]]:
        """Flat ids and start offsets for `nn.EmbeddingBag`: one bag per text, in order."""
        ids: list[int] = []
        offsets: list[int] = []
        for text in texts:
            offsets.append(len(ids))
            ids.extend(self(text))
        return ids, offsets
