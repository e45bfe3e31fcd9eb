"""sentiment/serving/text.py: the one normalisation shared by training and serving (pure functions, no artifact needed)."""

import dataclasses
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentiment import data

from sentiment.training import nbsvm
from sentiment.serving.text import Encoder, Features, build_vocab, char_ngrams, ngrams, normalize, normalized_length_bound, tokenize

FEATURES = Features()  # word 1..2-grams + character 2..5-grams, as trained


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
    texts, _, _ = data.load_dataset()
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


# --- char_ngrams ----------------------------------------------------------------------------------

def test_char_ngrams_of_one_word_are_padded_and_prefixed():
    # " go " padded: 2-grams, then 3-grams, then the whole padded word; no 5-gram fits in 4 characters
    assert char_ngrams(["go"], 2, 5) == ["c: g", "c:go", "c:o ", "c: go", "c:go ", "c: go "]


def test_char_ngrams_stay_inside_each_word():
    grams = char_ngrams(["ab", "cd"], 2, 2)
    assert grams == ["c: a", "c:ab", "c:b ", "c: c", "c:cd", "c:d "]
    assert not any("b c" in g or "bc" in g for g in grams)  # nothing spans the word boundary


def test_char_ngrams_range_and_short_inputs():
    assert char_ngrams(["a"], 2, 5) == ["c: a", "c:a ", "c: a "]
    assert char_ngrams(["film"], 3, 3) == ["c: fi", "c:fil", "c:ilm", "c:lm "]
    assert char_ngrams(["film"], 6, 6) == ["c: film "]  # the whole padded word marks a complete match
    assert char_ngrams(["!"], 3, 3) == ["c: ! "]
    assert char_ngrams([], 2, 5) == []
    assert all(g.startswith("c:") for g in char_ngrams(["don't", "self-indulgent"], 2, 5))


def test_char_ngrams_count_per_word():
    # a padded word of length L has L - size + 1 grams of each size that fits
    word = "wonderful"
    assert len(char_ngrams([word], 2, 5)) == sum(len(word) + 2 - size + 1 for size in range(2, 6))


# --- Features -------------------------------------------------------------------------------------

def test_features_are_word_ngrams_then_char_ngrams_of_the_tokens():
    assert Features(word_ngram=1, char_low=3, char_high=3)("It's GREAT!") == [
        "it's", "great", "!",
        "c: it", "c:it'", "c:t's", "c:'s ", "c: gr", "c:gre", "c:rea", "c:eat", "c:at ", "c: ! ",
    ]
    tokens = tokenize("A fine film, isn't it?")
    assert FEATURES("A fine film, isn't it?") == ngrams(tokens, 2) + char_ngrams(tokens, 2, 5)


def test_features_defaults_are_the_trained_ones_and_frozen():
    assert FEATURES == Features(word_ngram=2, char_low=2, char_high=5)
    assert nbsvm.FEATURES == FEATURES
    assert dataclasses.asdict(FEATURES) == {"word_ngram": 2, "char_low": 2, "char_high": 5}
    with pytest.raises(dataclasses.FrozenInstanceError):
        FEATURES.word_ngram = 3
    assert hash(Features()) == hash(FEATURES)


@pytest.mark.parametrize("blank", ["", " ", "\n\t  ", "<br />"])
def test_features_of_blank_text_are_empty(blank):
    assert FEATURES(blank) == []


def test_word_and_char_features_never_collide():
    # a word token never holds ":" or a space, so no word n-gram can look like a "c:" gram
    text = "c : c:go c: go -- it's a co-writer's :) C:GO"
    words, chars = ngrams(tokenize(text), 2), char_ngrams(tokenize(text), 2, 5)
    assert FEATURES(text) == words + chars
    assert not any(g.startswith("c:") for g in words)
    assert not set(words) & set(chars)


def test_features_of_raw_client_text_match_the_pretokenised_dataset():
    assert FEATURES("It\u2019s a CO-WRITER's film, isn't it?") == FEATURES("it's a co-writer's film , isn't it ?")


def test_a_misspelt_word_shares_char_features_with_the_correct_one():
    right, wrong = set(FEATURES("wonderful")), set(FEATURES("wonderfull"))
    assert "wonderful" in right and "wonderfull" in wrong and "wonderful" not in wrong  # the words differ...
    assert {"c: wond", "c:wonde", "c:derfu", "c:erful"} <= right & wrong  # ...their character grams mostly do not
    assert len(right & wrong) >= len(right) - 5


# --- build_vocab ----------------------------------------------------------------------------------

def test_build_vocab_most_frequent_first_ties_alphabetical():
    texts = ["b a", "a c", "c a"]
    vocab = build_vocab(texts, FEATURES, min_count=1)
    # word features: counts a 3, c 2, b 1, and each bigram once (ties broken alphabetically)
    assert [g for g in vocab if not g.startswith("c:")] == ["a", "c", "a c", "b", "b a", "c a"]
    # character features are counted the same way: "a" is in all three texts, "b" in one
    assert vocab[:4] == ["a", "c: a", "c: a ", "c:a "]
    assert vocab.index("c: c") < vocab.index("c: b")
    assert set(vocab) == {g for t in texts for g in FEATURES(t)}


def test_build_vocab_min_count_drops_rare_features():
    assert build_vocab(["b a", "a c", "c a"], FEATURES, min_count=2) == \
        ["a", "c: a", "c: a ", "c:a ", "c", "c: c", "c: c ", "c:c "]


def test_build_vocab_is_independent_of_text_order():
    texts = ["the film is good", "the film is bad", "a good film", "Bad, BAD film!"]
    vocab = build_vocab(texts, FEATURES, min_count=1)
    assert build_vocab(list(reversed(texts)), FEATURES, min_count=1) == vocab
    assert len(vocab) == len(set(vocab))


def test_build_vocab_max_size_keeps_the_most_frequent():
    texts = ["the film is good", "the film is bad", "a good film", "Bad, BAD film!"]
    full = build_vocab(texts, FEATURES, min_count=1)
    assert build_vocab(texts, FEATURES, min_count=1, max_size=7) == full[:7]
    assert build_vocab(texts, FEATURES, min_count=1, max_size=len(full) + 5) == full


def test_build_vocab_counts_what_features_of_each_text_gives():
    """Character n-grams are counted per distinct word (times its count), for speed: the vocabulary is the
    one counting every feature of every text gives, on real snippets and markup-laden long reviews."""
    texts = data.load_dataset()[0][:400] + data.load_imdb("test")[0][:40]
    counts = Counter(g for t in texts for g in FEATURES(t))
    expected = sorted((g for g, c in counts.items() if c >= 2), key=lambda g: (-counts[g], g))
    assert build_vocab(texts, FEATURES, min_count=2) == expected
    assert build_vocab(texts, FEATURES, min_count=2, max_size=5000) == expected[:5000]
    assert sum(t.count("<br />") for t in texts) > 40 and "br" not in counts and "c: br " not in counts  # markup, never a feature


def test_build_vocab_uses_the_same_normalisation_as_encode():
    features = Features(word_ngram=1, char_low=3, char_high=3)
    vocab = build_vocab(["It's GREAT!"], features, min_count=1)
    assert vocab == ["!", "c: ! ", "c: gr", "c: it", "c:'s ", "c:at ", "c:eat", "c:gre", "c:it'", "c:rea", "c:t's",
                     "great", "it's"]
    index = {g: i for i, g in enumerate(vocab)}
    assert sorted(Encoder(index, features)("it\u2019s great !")) == list(range(len(vocab)))


# --- Encoder -------------------------------------------------------------------------------------

INDEX = {"good": 0, "film": 1, "good film": 2, "bad": 3, "!": 4}
encode = Encoder(INDEX, FEATURES)


def test_encode_returns_only_known_ids_unknown_words_dropped():
    ids = encode("A GOOD film, zorblax!")
    # "a", ",", "zorblax", every bigram but "good film" and every character gram are unknown
    assert ids == [0, 1, 4, 2]
    assert set(ids) <= set(INDEX.values())


CHAR_INDEX = {**INDEX, "c: zo": 5, "c:ax ": 6, "c:ood": 7}
encode_chars = Encoder(CHAR_INDEX, FEATURES)


def test_encode_unknown_words_still_hit_known_char_features():
    # "zorblax" is no known word, but its character grams " zo" and "ax " are: word ids first, then char ids
    assert encode_chars("zorblax") == [5, 6]
    assert encode_chars("good zorblax") == [0, 7, 5, 6]
    assert encode_chars("quuxly") == []


def test_encode_text_with_only_unknown_words_is_empty():
    assert encode("zorblax quuxly") == []


@pytest.mark.parametrize("blank", ["", "   ", "\n", "<br />"])
def test_encode_empty_or_whitespace_text_is_an_explicit_empty_encoding(blank):
    assert encode(blank) == []


def test_batch_offsets_mark_each_text_including_empty_ones():
    ids, offsets = encode.batch(["good film", "", "zorblax", "bad!"])
    assert ids == [0, 1, 2, 3, 4]
    assert offsets == [0, 3, 3, 3]  # one offset per text, empty bags start where the next one does
    assert encode.batch([]) == ([], [])


def test_batch_is_concatenation_of_encode():
    texts = ["Good film!", "bad film", "", "good good", "zorblax"]
    ids, offsets = encode_chars.batch(texts)
    bounds = offsets + [len(ids)]
    assert [ids[bounds[i] : bounds[i + 1]] for i in range(len(texts))] == [encode_chars(t) for t in texts]


def test_encoder_ids_are_the_known_features_in_order_on_real_reviews(vocab_index, signature):
    """The per-word cache changes nothing: ids == the vocabulary's ids of features(text), in order,
    on a cold and on a warm cache, for rt-polarity snippets and for accented, HTML-laden text."""
    texts = data.load_dataset()[0][:2000] + ["Am\u00e9lie: a <b>CHARMANT</b> film\u2026 it\u2019s na\u00efve &amp; sweet!"]
    encoder = Encoder(vocab_index, signature.features)
    expected = [[vocab_index[g] for g in signature.features(t) if g in vocab_index] for t in texts]
    assert [encoder(t) for t in texts] == expected
    assert [encoder(t) for t in texts] == expected  # cached this time


# --- regressions: once known defects, fixed in sentiment/serving/text.py ---------------------------------------------

def test_acute_accent_used_as_apostrophe_is_an_apostrophe():
    # translated before NFKD, which would otherwise split U+00B4 into a space and a combining accent
    assert tokenize("it\u00b4s great") == ["it's", "great"]
    assert normalize("IT\u00b4S") == "it's"


def test_angle_brackets_in_prose_are_not_tags():
    assert tokenize("I <3 this film. The ending > everything") == \
        ["i", "<", "3", "this", "film", ".", "the", "ending", ">", "everything"]
    assert tokenize("1 < 2 but 3 > 2") == ["1", "<", "2", "but", "3", ">", "2"]
    # while real tags, closing tags and tags with attributes still go
    assert tokenize('<3 <b>bold</b> <a href="x">link</a>') == ["<", "3", "bold", "link"]


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.one_of(st.characters(), st.sampled_from(["&#xFDFA;", "&amp;", "<br />", "\ufdfa", "İ", "e\u0301"]))).map("".join))
def test_normalized_length_bound_is_never_below_the_normalised_length(text):
    """payload.check_text's length limit uses the bound, so the model never reads more than max_chars."""
    assert normalized_length_bound(text) >= len(normalize(text))
