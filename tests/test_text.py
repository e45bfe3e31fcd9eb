"""text.py: the one normalisation shared by training and serving (pure functions, no artifact needed)."""

import re

import pytest

import train
from text import build_vocab, encode, encode_batch, ngrams, normalize, tokenize


# --- normalize ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw, expected",
    [
        ("a film<br />with heart", "a film with heart"),
        ("a film<br/><br/>with heart", "a film  with heart"),
        ('<p class="review">Great</p>', " great "),
        ("<i>Amélie</i>", " amelie "),
    ],
)
def test_normalize_strips_html_tags(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("rock &amp; roll", "rock & roll"),
        ("&quot;wow&quot;", '"wow"'),
        ("it&#39;s", "it's"),
        ("it&rsquo;s", "it's"),  # entity -> curly apostrophe -> plain apostrophe
        ("caf&eacute;", "cafe"),  # entity -> accented letter -> accent dropped
    ],
)
def test_normalize_unescapes_entities(raw, expected):
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("CAFÉ Naïve Señor", "cafe naive senor"),
        ("cafe\u0301", "cafe"),  # combining accent (decomposed form) dropped the same way
        ("\uff26\uff29\uff2c\uff2d", "film"),  # full-width letters (NFKC)
        ("\ufb01ne", "fine"),  # the "fi" ligature (NFKC)
        ("it\u2019s", "it's"),  # right single quotation mark
        ("\u2018tis", "'tis"),  # left single quotation mark
        ("it`s", "it's"),  # backtick
        ("It's GREAT", "it's great"),
    ],
)
def test_normalize_unicode_accents_apostrophes_and_case(raw, expected):
    assert normalize(raw) == expected


def test_normalize_is_idempotent():
    raw = "<b>Amélie</b> &amp; CO\u2019s ﬁlm — “wow”"
    once = normalize(raw)
    assert normalize(once) == once


# --- tokenize -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw, pretokenised",
    [
        ("It's GREAT!", "it's great !"),
        ("It\u2019s a co-writer's film, isn't it?", "it's a co-writer's film , isn't it ?"),
        ("Dull...and LONG.", "dull . . . and long ."),
        ("A mess (a big one): avoid!!", "a mess ( a big one ) : avoid ! !"),
        ("Wonderful<br /><br />Truly.", "wonderful truly ."),
        ("Rock &amp; roll", "rock & roll"),
    ],
)
def test_raw_client_text_tokenises_like_the_pretokenised_dataset(raw, pretokenised):
    assert tokenize(raw) == tokenize(pretokenised) == pretokenised.split()


def test_every_dataset_snippet_tokenises_the_same_when_written_as_raw_client_text():
    """Undo the data set's tokenisation (punctuation glued back, upper case, curly apostrophes): same tokens."""
    texts, _, _ = train.load_dataset()
    checked = 0
    for line in texts:
        if "&#" in line:  # a couple of snippets carry broken entities ("can&#8217 ; t"): not client-like
            continue
        raw = re.sub(r" ([,.!?;:)])", r"\1", line)
        raw = re.sub(r"\( ", "(", raw).upper().replace("'", "\u2019")
        assert tokenize(raw) == tokenize(line), line
        checked += 1
    assert checked > 10_000


def test_tokenize_keeps_inner_apostrophes_and_hyphens_and_splits_other_symbols():
    assert tokenize("don't self-indulgent 'quoted' -- $5") == ["don't", "self-indulgent", "'", "quoted", "'", "-", "-", "$", "5"]


@pytest.mark.parametrize("blank", ["", " ", "\n\t  ", "<br />", "<br/><p></p>"])
def test_tokenize_blank_text_gives_no_tokens(blank):
    assert tokenize(blank) == []


# --- ngrams ---------------------------------------------------------------------------------------

def test_ngrams_unigrams_then_bigrams_in_order():
    assert ngrams(["a", "fine", "film"], 2) == ["a", "fine", "film", "a fine", "fine film"]


def test_ngrams_trigrams_and_short_inputs():
    assert ngrams(["a", "b", "c"], 3) == ["a", "b", "c", "a b", "b c", "a b c"]
    assert ngrams(["solo"], 2) == ["solo"]
    assert ngrams([], 2) == []
    assert ngrams(["a", "b"], 1) == ["a", "b"]


# --- build_vocab ----------------------------------------------------------------------------------

def test_build_vocab_most_frequent_first_ties_alphabetical():
    texts = ["b a", "a c", "c a"]
    # counts: a 3, c 2, b 1, and each bigram once (ties broken alphabetically)
    assert build_vocab(texts, ngram=2, min_count=1) == ["a", "c", "a c", "b", "b a", "c a"]


def test_build_vocab_min_count_drops_rare_features():
    assert build_vocab(["b a", "a c", "c a"], ngram=2, min_count=2) == ["a", "c"]


def test_build_vocab_is_independent_of_text_order():
    texts = ["the film is good", "the film is bad", "a good film", "Bad, BAD film!"]
    vocab = build_vocab(texts, ngram=2, min_count=1)
    assert build_vocab(list(reversed(texts)), ngram=2, min_count=1) == vocab
    assert len(vocab) == len(set(vocab))


def test_build_vocab_uses_the_same_normalisation_as_encode():
    vocab = build_vocab(["It's GREAT!"], ngram=1, min_count=1)
    assert vocab == ["!", "great", "it's"]


# --- encode / encode_batch ------------------------------------------------------------------------

INDEX = {"good": 0, "film": 1, "good film": 2, "bad": 3, "!": 4}


def test_encode_returns_only_known_ids_unknown_words_dropped():
    ids = encode("A GOOD film, zorblax!", INDEX, ngram=2)
    # "a", ",", "zorblax" and every bigram but "good film" are unknown
    assert ids == [0, 1, 4, 2]
    assert set(ids) <= set(INDEX.values())


def test_encode_text_with_only_unknown_words_is_empty():
    assert encode("zorblax quuxly", INDEX, ngram=2) == []


@pytest.mark.parametrize("blank", ["", "   ", "\n", "<br />"])
def test_encode_empty_or_whitespace_text_is_an_explicit_empty_encoding(blank):
    assert encode(blank, INDEX, ngram=2) == []


def test_encode_batch_offsets_mark_each_text_including_empty_ones():
    ids, offsets = encode_batch(["good film", "", "zorblax", "bad!"], INDEX, ngram=2)
    assert ids == [0, 1, 2, 3, 4]
    assert offsets == [0, 3, 3, 3]  # one offset per text, empty bags start where the next one does
    assert encode_batch([], INDEX, ngram=2) == ([], [])


def test_encode_batch_is_concatenation_of_encode():
    texts = ["Good film!", "bad film", "", "good good"]
    ids, offsets = encode_batch(texts, INDEX, ngram=2)
    bounds = offsets + [len(ids)]
    assert [ids[bounds[i] : bounds[i + 1]] for i in range(len(texts))] == [encode(t, INDEX, 2) for t in texts]


# --- known defects (strict xfail: they start failing as XPASS once text.py is fixed; then drop the marker) ---

@pytest.mark.xfail(strict=True, reason="text.py: NFKD turns U+00B4 into space + combining accent before _APOSTROPHES "
                   "maps it, so the acute-accent apostrophe splits the word; translate before NFKD")
def test_acute_accent_used_as_apostrophe_is_an_apostrophe():
    assert tokenize("it\u00b4s great") == ["it's", "great"]


@pytest.mark.xfail(strict=True, reason="text.py: _TAG matches any '<...>' span, so a bare '<' ... '>' in prose "
                   "deletes the words between them; only strip tag-shaped spans")
def test_angle_brackets_in_prose_are_not_tags():
    assert tokenize("I <3 this film. The ending > everything") == \
        ["i", "<", "3", "this", "film", ".", "the", "ending", ">", "everything"]
