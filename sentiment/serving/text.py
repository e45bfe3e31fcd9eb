"""Text normalisation and encoding: the one copy used by training, export, the handler and batch scoring.

The training data (rt-polarity) is already lower-cased and tokenised with punctuation split off;
real client text is not. `tokenize` maps both to the same token stream, so the served model
sees exactly what it was trained on. Each model version has one featuriser with the same entry
point, `inputs(texts) -> the core's input tensors`: `Encoder` (v1, n-gram ids) and
`WordPieceEncoder` (v2, the transformer's WordPiece ids and attention mask).
"""

import html
import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

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


def normalized_length_bound(text: str) -> int:
    """At least len(normalize(text)), in C and ~60x faster on non-ASCII text: HTML entities and
    compatibility forms expand ("&#xFDFA;" reads as 18 characters), tags and dropped accents only shrink."""
    if text.isascii() and "&" not in text:
        return len(text)
    return len(unicodedata.normalize("NFKC", html.unescape(text)).lower())


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(normalize(text))


_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")  # html.unescape's own pattern


def token_spans(text: str) -> list[tuple[str, int, int]]:
    """`tokenize(text)` with where each token came from: (token, start, end), `text[start:end]` being the
    client's characters it was normalised from (an entity, a ligature, an accented or upper-case letter).

    `normalize` step by step, each output character carrying the span of the input it came from:
    a tag becomes a space spanning the tag, an entity its characters spanning the entity, NFKD and
    the dropped accents work per character, NFKC composes only neighbours (every accent is gone by
    then), lower case is per character but for its length-neutral final-sigma rule. The result is
    checked against `normalize(text)`, so the tokens are always `tokenize(text)`; should a Unicode
    corner ever break that, every token spans the whole text (and a warning is logged)."""
    chars = _normalized_chars(text)
    normalized = "".join(ch for ch, _, _ in chars)
    if normalized != normalize(text):
        logging.getLogger(__name__).warning("token_spans: offsets lost for a text (%d characters)", len(text))
        return [(token, 0, len(text)) for token in tokenize(text)]
    # Every step keeps the order of the text, so starts and ends never decrease along `chars`.
    return [(m.group(), chars[m.start()][1], chars[m.end() - 1][2]) for m in _TOKEN.finditer(normalized)]


def _normalized_chars(text: str) -> list[tuple[str, int, int]]:
    """normalize(text) as (character, start, end in text) triples; see token_spans."""
    chars, at = [], 0
    for tag in _TAG.finditer(text):
        chars += [(text[i], i, i + 1) for i in range(at, tag.start())] + [(" ", tag.start(), tag.end())]
        at = tag.end()
    chars += [(text[i], i, i + 1) for i in range(at, len(text))]

    if "&" in text:  # html.unescape, entity by entity (the text between entities is left as it is)
        plain = "".join(ch for ch, _, _ in chars)
        unescaped, at = [], 0
        for ref in _CHARREF.finditer(plain):
            unescaped += chars[at : ref.start()]
            source, replacement = ref.group(), html.unescape(ref.group())
            literal = 0  # a named entity without ";" keeps the letters after its name ("&amplifier" -> "&lifier")
            while literal < min(len(source), len(replacement)) and source[-1 - literal] == replacement[-1 - literal]:
                literal += 1
            entity = chars[ref.start() : ref.end() - literal] or chars[ref.start() : ref.end()]
            unescaped += [(ch, entity[0][1], entity[-1][2]) for ch in replacement[: len(replacement) - literal]]
            unescaped += chars[ref.end() - literal : ref.end()]
            at = ref.end()
        chars = unescaped + chars[at:]
    chars = [(ch.translate(_APOSTROPHES), start, end) for ch, start, end in chars]
    if all(ch.isascii() for ch, _, _ in chars):
        return [(ch.lower(), start, end) for ch, start, end in chars]

    decomposed = [(d, start, end) for ch, start, end in chars for d in unicodedata.normalize("NFKD", ch)
                  if not unicodedata.combining(d)]
    if not unicodedata.is_normalized("NFKC", "".join(ch for ch, _, _ in decomposed)):
        composed, group, start, end = [], "", 0, 0
        for ch, ch_start, ch_end in decomposed:
            single = unicodedata.normalize("NFKC", ch)
            if group and unicodedata.normalize("NFKC", group + ch) != group + single:  # composes with its neighbour
                group, end = unicodedata.normalize("NFKC", group + ch), max(end, ch_end)
                continue
            composed += [(c, start, end) for c in group]
            group, start, end = single, ch_start, ch_end
        decomposed = composed + [(c, start, end) for c in group]
    chars = [(ch.translate(_APOSTROPHES), start, end) for ch, start, end in decomposed]
    lowered = "".join(ch for ch, _, _ in chars).lower()  # the whole string: str.lower's final-sigma rule needs context
    out, at = [], 0
    for ch, start, end in chars:
        width = len(ch.lower())
        out += [(c, start, end) for c in lowered[at : at + width]]
        at += width
    return out


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


def build_vocab(texts: Iterable[str], features: Features, min_count: int, max_size: int | None = None) -> list[str]:
    """Features seen at least `min_count` times, most frequent first (ties alphabetical, so deterministic),
    the `max_size` most frequent of them. A word's character n-grams are counted once per distinct word,
    times its count: the counts of `features(text)`, without building ~100 million strings for IMDB."""
    words, counts = Counter(), Counter()
    for text in texts:
        tokens = tokenize(text)
        words.update(tokens)
        counts.update(ngrams(tokens, features.word_ngram))
    for word, n in words.items():
        for gram in _word_char_ngrams(word, features.char_low, features.char_high):
            counts[gram] += n
    kept = [g for g, c in counts.items() if c >= min_count]
    if max_size is not None and len(kept) > max_size:  # sort only what can make the cut
        cutoff = sorted((counts[g] for g in kept), reverse=True)[max_size - 1]
        kept = [g for g in kept if counts[g] >= cutoff]
    return sorted(kept, key=lambda g: (-counts[g], g))[:max_size]


def to_tensors(ids: list[int], offsets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat feature ids and bag offsets as the v1 core takes them (int64)."""
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


class Encoder:
    """Text -> feature ids for one vocabulary: `ids = Encoder(index, features)(text)`.

    Build it once (per worker, per training run, per batch job) and keep it: it caches each word's
    character n-gram ids, because words repeat (Zipf) and looking those n-grams up one by one was
    most of the encoding time. The ids are those of `features(text)` that the vocabulary knows, in
    the same order; unknown features are dropped (an empty bag scores the bias)."""

    max_batch = 1 << 16  # texts per forward pass in core.predict_proba: a bag costs the core next to nothing

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

    def inputs(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The v1 core's inputs: int64 ids [n_features] and offsets [batch]."""
        return to_tensors(*self.batch(texts))

    @staticmethod
    def lengths(texts: Sequence[str]) -> list[int]:
        """Words the model reads of each text (`tokenize`): the length the calibration map reads (Signature.calibrate),
        because v1's logit sums a term per n-gram and so grows with the text."""
        return [len(tokenize(text)) for text in texts]

    def chunks(self, texts: Sequence[str]) -> Iterator[tuple[list[int], tuple[torch.Tensor, torch.Tensor]]]:
        """The forward passes for a batch of texts, with the positions of their texts: consecutive runs of max_batch."""
        for start in range(0, len(texts), self.max_batch):
            yield list(range(start, min(start + self.max_batch, len(texts)))), self.inputs(texts[start : start + self.max_batch])


def blank_tags(text: str) -> str:
    """HTML tags replaced by as many spaces, so character offsets into the client's text still hold."""
    return _TAG.sub(lambda tag: " " * len(tag.group()), text)


class WordPieceEncoder:
    """Text -> (input_ids, attention_mask) for the v2 transformer, with the tokenizer.json that
    shipped with its pretrained weights (Rust `tokenizers`: BERT normalisation, i.e. lower case and
    accents dropped as in v1's `normalize`, then WordPiece). HTML tags are blanked first as in v1;
    HTML entities are left to the tokenizer (v1 unescapes them).

    Texts longer than `max_length` tokens keep their head and their tail (`head_tokens` from the
    start, the rest from the end): a review's verdict is often in its last lines (Sun et al. 2019,
    "How to Fine-Tune BERT for Text Classification", found head+tail best on IMDb)."""

    max_batch = 64  # texts per forward pass: attention memory grows with batch x length^2
    length_spread = 1.5  # a forward pass holds texts within this ratio of token counts (see `chunks`)

    def __init__(self, tokenizer_file: Path, max_length: int, head_tokens: int):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_truncation()  # done here, head + tail
        self.tokenizer.no_padding()  # done here, to the longest text of each batch
        # A review that says "[SEP]" or "[PAD]" means the characters: read them as text ("[", "sep", "]"),
        # never as the special tokens; [CLS] and [SEP] are added here by id.
        self.tokenizer.encode_special_tokens = True
        self.max_length, self.head_tokens = max_length, head_tokens
        self.cls, self.sep = self.tokenizer.token_to_id("[CLS]"), self.tokenizer.token_to_id("[SEP]")

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """[CLS] + the kept WordPiece ids + [SEP] for each text."""
        keep = self.max_length - 2
        tail_tokens = keep - self.head_tokens
        rows = []
        for encoding in self.tokenizer.encode_batch([blank_tags(t) for t in texts], add_special_tokens=False):
            ids = encoding.ids
            if len(ids) > keep:
                ids = ids[: self.head_tokens] + ids[len(ids) - tail_tokens :]
            rows.append([self.cls, *ids, self.sep])
        return rows

    def inputs(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The v2 core's inputs: int64 input_ids and attention_mask [batch, longest text], padded with id 0."""
        return self.padded(self.token_ids(texts))

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Word pieces the model reads of each text (head + tail, without [CLS] and [SEP]): the length the
        calibration map reads (Signature.calibrate)."""
        return [len(row) - 2 for row in self.token_ids(texts)]

    def chunks(self, texts: Sequence[str]) -> Iterator[tuple[list[int], tuple[torch.Tensor, torch.Tensor]]]:
        """The forward passes for a batch of texts, with the positions of their texts: texts of similar
        length together (within `length_spread`), at most max_batch a pass. Padded to one length, a
        snippet batched with a long review costs as much as the review (and attention grows with the
        square of the length): a TorchServe batch of mixed requests served 3x slower than its parts."""
        rows = self.token_ids(texts)
        group: list[int] = []
        for i in sorted(range(len(rows)), key=lambda i: len(rows[i])):
            if group and (len(group) == self.max_batch or len(rows[i]) > self.length_spread * len(rows[group[0]])):
                yield group, self.padded([rows[j] for j in group])
                group = []
            group.append(i)
        if group:
            yield group, self.padded([rows[j] for j in group])

    @staticmethod
    def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(map(len, rows))
        input_ids = torch.zeros(len(rows), length, dtype=torch.long)
        attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask
