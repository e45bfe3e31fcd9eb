"""sentiment/training/nbsvm.py: the data, the fixed split (fresh labels held out by construction), deterministic training and a
quick accuracy sanity check."""

import hashlib
import json
import math
import random
import re
import subprocess
from collections import Counter

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from sentiment.ops import evaluate
from sentiment.training import pretrained
from sentiment import data
from sentiment.training import nbsvm
from sentiment.training import transformer
from sentiment.serving.text import Encoder, Features, WordPieceEncoder, build_vocab, tokenize

README_MD5 = {
    "rt-polarity.pos": "674ca95d7fa6547818f1cb30daa7eafe",
    "rt-polarity.neg": "7d312d2c8eacbb57b0074c59b910756a",
}
N_ROWS = 10_662  # 5,331 positive + 5,331 negative, one snippet a line (data README)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine is shared: one intra-op thread is as fast here and does not fight other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset():
    return data.load_dataset()


@pytest.fixture(scope="module")
def small(dataset):
    """1,200 rows drawn with a fixed seed: enough for train() to run its own split, fast enough to train twice."""
    texts, labels, _ = dataset
    chosen = random.Random(123).sample(range(len(texts)), 1200)
    return [texts[i] for i in chosen], [labels[i] for i in chosen]


# --- data -----------------------------------------------------------------------------------------

def test_load_dataset_md5s_match_the_data_readme(dataset):
    _, _, md5 = dataset
    assert md5 == README_MD5
    readme = (data.DATA_DIR / "README.md").read_text()
    for name, digest in README_MD5.items():
        assert re.search(rf"`{re.escape(name)}` {digest}", readme)
        assert hashlib.md5((data.DATA_DIR / name).read_bytes()).hexdigest() == digest


def test_load_dataset_labels_and_texts_align(dataset):
    texts, labels, _ = dataset
    assert len(texts) == len(labels)
    assert set(labels) == {0, 1}
    assert labels == sorted(labels, reverse=True)  # positive file first, then negative
    assert all(isinstance(t, str) and t.strip() for t in texts)


def test_load_dataset_reads_one_row_per_line(dataset):
    """Regression: str.splitlines() also broke at U+0085 (byte 0x85 decoded as latin-1), giving 10,685 rows."""
    texts, labels, _ = dataset
    assert len(texts) == N_ROWS
    assert labels.count(1) == labels.count(0) == N_ROWS // 2
    for name in README_MD5:
        raw = (data.DATA_DIR / name).read_bytes()
        assert raw.count(b"\n") == N_ROWS // 2
    assert sum("\u2026" in t for t in texts) > 0  # byte 0x85 stays inside its snippet (as an ellipsis), not a line break
    assert not any("\n" in t or "\r" in t for t in texts)


def test_dataset_ellipsis_byte_tokenises_like_a_client_ellipsis(dataset):
    """rt-polarity writes an ellipsis as byte 0x85 (cp1252); load_dataset restores it as U+2026."""
    texts, _, _ = dataset
    assert not any("\x85" in t for t in texts)
    with_ellipsis = [t for t in texts if "\u2026" in t]
    assert len(with_ellipsis) == 31
    for text in with_ellipsis:
        assert tokenize(text) == tokenize(text.replace("\u2026", "..."))
        assert "." in tokenize(text)


# --- split ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [N_ROWS, 10_661, 1200, 10])
def test_split_is_disjoint_covers_everything_and_has_documented_sizes(n):
    parts = data.split(n)
    test, val, rest = (set(parts[k]) for k in ("test", "validation", "train"))
    assert not (test & val) and not (test & rest) and not (val & rest)
    assert test | val | rest == set(range(n))
    assert sum(len(v) for v in parts.values()) == n  # no duplicates within a part either
    assert len(parts["test"]) == int(n * data.TEST_FRACTION)
    assert len(parts["validation"]) == int(n * data.VALIDATION_FRACTION)


def test_split_is_fixed_across_calls_and_independent_of_the_global_rng():
    first = data.split(N_ROWS)
    random.seed(999)
    torch.manual_seed(999)
    assert data.split(N_ROWS) == first
    assert first["test"][:5] == data.split(N_ROWS)["test"][:5]


# --- IMDB -----------------------------------------------------------------------------------------

IMDB_SHA256 = {  # the data README's table
    "imdb_train.jsonl.gz": "fc4f6291912a7cae6d067111122c8987d9732f2881780decccee8c635d5145b7",
    "imdb_test.jsonl.gz": "202b745ad3a99a29e7d9a5ffa67b13a21afd2048a0170524a878fa6030d5237b",
}


@pytest.fixture(scope="module")
def imdb():
    return data.load_imdb("train")


def test_imdb_files_are_the_ones_the_data_readme_describes():
    assert {name: hashlib.sha256((data.IMDB_DIR / name).read_bytes()).hexdigest() for name in IMDB_SHA256} == IMDB_SHA256


def test_imdb_reviews_are_kept_once_and_no_test_review_repeats_a_train_review(imdb):
    """The data repeat some reviews under other ids (README): each text once, or a review lands on both sides
    of the validation split; an IMDB test review that repeats a train review is dropped (never trained on)."""
    texts, labels, md5 = imdb
    keys = [data.text_key(t) for t in texts]
    assert len(set(keys)) == len(keys) and 23_800 < len(texts) < 23_997  # 23,997 rows, some repeated
    assert set(labels) == {0, 1} and abs(sum(labels) / len(labels) - 0.5) < 0.01
    assert "<br />" in " ".join(texts[:100])  # as published: the featuriser, not the loader, drops the markup
    test_texts, _, test_md5 = data.load_imdb("test")
    assert not {data.text_key(t) for t in test_texts} & set(keys)
    assert md5.keys() == {"imdb_train.jsonl.gz"} and test_md5.keys() == {"imdb_test.jsonl.gz"}


def test_imdb_validation_is_a_stable_share_never_trained_on_and_rt_polarity_is_split_as_before(dataset, imdb):
    texts, labels, _ = dataset
    parts = data.subsets(texts, labels, imdb=imdb[:2])
    validation, trained = set(parts["imdb_validation"][0]), set(parts["train"][0])
    assert not validation & trained and len(validation) + len(trained) == len(imdb[0]) + len(data.split(len(texts))["train"])
    assert abs(len(validation) / len(imdb[0]) - data.IMDB_VALIDATION) < 0.006  # 23,904 draws: 3 standard errors
    alone = data.subsets(texts, labels)
    assert parts["test"] == alone["test"] and parts["validation"] == alone["validation"]
    assert parts["train"][0][: len(alone["train"][0])] == alone["train"][0]
    # decided by each text alone: the same reviews in another order, and independent of the fresh held-out share
    again = data.subsets(texts, labels, imdb=(imdb[0][::-1], imdb[1][::-1]))
    assert set(again["imdb_validation"][0]) == validation
    both = sum(data.is_held_out(t) for t in validation) / len(validation)
    assert abs(both - data.FRESH_HELD_OUT) < 0.03


def test_held_out_validation_is_the_mix_of_short_and_long_reviews_calibration_is_fitted_on(dataset, imdb):
    """export.py fits calibration on data.held_out(metrics, "validation"): rt-polarity's validation snippets
    and IMDB's validation reviews for a model trained on both, the snippets alone for one trained on rt-polarity."""
    texts, labels, md5 = dataset
    parts = data.subsets(texts, labels, imdb=imdb[:2])
    both = data.held_out({"data_md5": md5, "imdb_md5": imdb[2]}, "validation")
    assert both == (parts["validation"][0] + parts["imdb_validation"][0], parts["validation"][1] + parts["imdb_validation"][1])
    assert data.held_out({"data_md5": md5}, "validation") == parts["validation"]
    assert data.held_out({"data_md5": md5}, "test") == parts["test"]
    with pytest.raises(SystemExit, match="changed since training"):
        data.held_out({"data_md5": md5, "imdb_md5": {"imdb_train.jsonl.gz": "0" * 32}}, "validation")


# --- training -------------------------------------------------------------------------------------

def test_training_is_deterministic_whatever_the_seed(small):
    """The fit is full-batch L-BFGS from zero weights: two runs, with any seeds, learn the same weights
    (the seed is only recorded)."""
    model_a, config_a, vocab_a, metrics_a = nbsvm.train(*small, seed=7)
    model_b, config_b, vocab_b, metrics_b = nbsvm.train(*small, seed=8)
    assert config_a == config_b and vocab_a == vocab_b
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    assert {**metrics_a, "seed": 8} == metrics_b
    assert model_a.weight.weight.abs().sum() > 0  # and it learned something


@pytest.fixture(scope="module")
def short_run(dataset):
    """nbsvm.train on rt-polarity alone (IMDB makes it a minute longer): (model, config, vocab, metrics)."""
    texts, labels, _ = dataset
    return nbsvm.train(texts, labels, seed=1)


@pytest.fixture(scope="module")
def training_counts(dataset):
    """Counted straight from text.Features on the training split alone (no Encoder, no build_vocab):
    each feature's occurrences, and the number of positive and negative training texts it is in."""
    texts, labels, _ = dataset
    occurrences, present = Counter(), {0: Counter(), 1: Counter()}
    for i in data.split(len(texts))["train"]:
        grams = nbsvm.FEATURES(texts[i])
        occurrences.update(grams)
        present[labels[i]].update(set(grams))
    return occurrences, present


def hand_logit(grams, index: dict[str, int], weight: np.ndarray, scale: np.ndarray, bias: float) -> float:
    """bias + sum of weight * naive-Bayes scale over the text's known features, each occurrence counted."""
    known = [index[g] for g in grams if g in index]
    return bias + float(np.sum(weight[known] * scale[known]))


def hand_features(text: str) -> list[str]:
    """text.Features(word_ngram=2, char 2..5) written out for lower-case words and single spaces only."""
    words = text.split(" ")
    char_grams = [f"c:{padded[i:i + n]}" for padded in (f" {w} " for w in words)
                  for n in range(2, 6) for i in range(len(padded) - n + 1)]
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])] + char_grams


def test_short_training_run_clears_the_sanity_bar_on_held_out_data(dataset, short_run):
    texts, labels, _ = dataset
    model, config, vocab, metrics = short_run
    assert not model.training
    assert config.vocab_size == len(vocab) == model.weight.num_embeddings
    assert any(g.startswith("c:") for g in vocab)  # trained on nbsvm.FEATURES: character grams too
    assert metrics["test"]["size"] == len(data.split(len(texts))["test"])
    assert metrics["test"]["accuracy"] > 0.75


def test_reported_test_metrics_recomputed_independently_from_the_weights(dataset, short_run, training_counts):
    """The reported held-out accuracy and AUC, recomputed without nbsvm.predict_proba, text.Encoder or the
    EmbeddingBag: each logit by hand in numpy (bias + sum of weight x NB scale over the text's features),
    the NB scale itself recounted from the training texts."""
    texts, labels, _ = dataset
    model, config, vocab, metrics = short_run
    index = {g: i for i, g in enumerate(vocab)}
    weight = model.weight.weight.detach().numpy()[:, 0].astype(np.float64)
    scale = model.feature_scale.numpy().astype(np.float64)
    bias = model.bias.item()

    # the NB scale: log((present in positive + 1) / (sum over vocab)) - the same for negative, alpha = 1
    _, present = training_counts
    pos = np.array([present[1][g] for g in vocab], dtype=np.float64) + 1
    neg = np.array([present[0][g] for g in vocab], dtype=np.float64) + 1
    assert scale == pytest.approx(np.log(pos / pos.sum()) - np.log(neg / neg.sum()), abs=1e-5)

    test_idx = data.split(len(texts))["test"]
    logits = np.array([hand_logit(nbsvm.FEATURES(texts[i]), index, weight, scale, bias) for i in test_idx])
    truth = np.array([labels[i] for i in test_idx])
    assert len(logits) == metrics["test"]["size"] == 1066
    accuracy = float(np.mean((logits >= 0) == truth))  # probability >= 0.5 <=> logit >= 0
    assert round(accuracy, 4) == metrics["test"]["accuracy"]
    assert roc_auc_score(truth, logits) == pytest.approx(metrics["test"]["roc_auc"], abs=1e-4)


@pytest.mark.parametrize("text", ["a wonderful film", "dull and lifeless", "not a masterpiece but i loved every minute"])
def test_logit_by_hand_for_a_few_texts(short_run, text):
    """Features written out by hand (independent of sentiment/serving/text.py's code), then the logit from the vocabulary, the
    NB scale, the weights and the bias: the model with the Encoder's ids must give the same number."""
    model, _, vocab, _ = short_run
    grams = hand_features(text)
    assert Counter(grams) == Counter(nbsvm.FEATURES(text))
    index = {g: i for i, g in enumerate(vocab)}
    expected = hand_logit(grams, index, model.weight.weight.detach().numpy()[:, 0].astype(np.float64),
                          model.feature_scale.numpy().astype(np.float64), model.bias.item())
    encoder = Encoder(index, nbsvm.FEATURES)
    with torch.inference_mode():
        (logit,) = model(torch.tensor(encoder(text), dtype=torch.long), torch.tensor([0]))
    assert sum(g in index for g in grams) > 10
    assert logit.item() == pytest.approx(expected, abs=1e-5)


def test_vocabulary_has_no_feature_seen_only_in_held_out_texts(dataset, imdb, short_run, training_counts, export_dir, signature):
    """A feature that occurs only in held-out texts must not be in the vocabulary: neither in the one
    nbsvm.train builds from rt-polarity (exactly the training split's features seen MIN_COUNT times, fewer
    than MAX_VOCAB) nor in the shipped build/v1 one (rt-polarity and IMDB: the MAX_VOCAB most frequent
    features of the training rows seen MIN_COUNT times)."""
    texts, labels, _ = dataset
    parts = data.split(len(texts))
    occurrences, _ = training_counts
    held_out_only = {g for i in parts["test"] + parts["validation"] for g in nbsvm.FEATURES(texts[i])} - occurrences.keys()
    assert len(held_out_only) > 1000  # there is something to leak
    expected = {g for g, count in occurrences.items() if count >= nbsvm.MIN_COUNT}
    assert len(expected) < nbsvm.MAX_VOCAB and set(short_run[2]) == expected
    assert not held_out_only & set(short_run[2])

    both = data.subsets(texts, labels, imdb=imdb[:2])
    seen = set(build_vocab(both["train"][0], nbsvm.FEATURES, 1))
    held_out_texts = both["test"][0] + both["validation"][0] + both["imdb_validation"][0]
    held_out_only = {g for text in held_out_texts for g in nbsvm.FEATURES(text)} - seen
    shipped = json.loads((export_dir / signature.vocab_file).read_text())
    assert len(held_out_only) > 1000 and not held_out_only & set(shipped)
    assert shipped == build_vocab(both["train"][0], nbsvm.FEATURES, nbsvm.MIN_COUNT, nbsvm.MAX_VOCAB)
    assert len(shipped) == nbsvm.MAX_VOCAB


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_evaluate_scores_a_known_core():

    def core(ids, offsets):  # +2 per "good", -2 per "bad"
        signs = torch.tensor([2.0, -2.0])
        bounds = offsets.tolist() + [len(ids)]
        return torch.stack([signs[ids[bounds[i] : bounds[i + 1]]].sum() for i in range(len(offsets))])

    # logits 4, 2, -2, 0 -> probabilities .98, .88, .12, .5: the last one is called positive (>= threshold)
    words = Encoder({"good": 0, "bad": 1}, Features(word_ngram=1))  # no character grams: dropped at encode time
    metrics = nbsvm.evaluate(core, ["good good", "good", "bad", "good bad"], [1, 1, 0, 0], words)
    log_loss = -(math.log(sigmoid(4)) + 2 * math.log(sigmoid(2)) + math.log(0.5)) / 4  # 1 - sigmoid(-2) = sigmoid(2)
    assert metrics == {"accuracy": 0.75, "roc_auc": 1.0, "log_loss": round(log_loss, 4), "size": 4}
    # a higher threshold calls the 0.5 one negative
    assert nbsvm.evaluate(core, ["good bad", "good good"], [0, 1], words, threshold=0.6)["accuracy"] == 1.0


# --- fresh labels: held out by construction, the corpus split fixed whatever is added --------------------

SPLIT_SHA256 = {  # json.dumps of data.split(10,662)'s index lists: the split every version so far was scored on
    "test": "11da81bc0095b74ef7f0e8e9b93c60ae2484aadfb2131100556680957cd9c14f",
    "validation": "7ccf0c61836128c849a0c3f670957ef922ce79f1912a916e6b3606bf79cd18cd",
    "train": "6d1e833fb78176c5338ecca76920b7b3f876fd807567deccbdf446b1b5f99d7f",
}


def made_up_word(i: int) -> str:
    """A word no review has (letters only, so it stays one token): q + i written in letters."""
    return "qz" + "".join(chr(ord("a") + int(d)) for d in str(i))


def fresh_reviews(n: int, start: int = 0) -> data.Fresh:
    return data.Fresh([f"a {made_up_word(i)} film, {'loved' if i % 2 else 'hated'} {made_up_word(i)}" for i in range(start, start + n)],
                       [i % 2 for i in range(start, start + n)])


def test_the_corpus_split_is_the_one_every_version_was_scored_on(dataset):
    """data.split of the 10,662 snippets, and data.subsets without fresh data, are what they were when v1
    (0.7908) and v2 were trained and scored: the same indices, in the same order."""
    texts, labels, _ = dataset
    parts = data.split(len(texts))
    assert {name: hashlib.sha256(json.dumps(idx).encode()).hexdigest() for name, idx in parts.items()} == SPLIT_SHA256
    assert data.subsets(texts, labels) == {**{name: ([texts[i] for i in idx], [labels[i] for i in idx])
                                               for name, idx in parts.items()}, "fresh_test": ([], []), "imdb_validation": ([], [])}


def test_adding_fresh_data_never_changes_the_corpus_test_and_validation_sets(dataset):
    """Regression: fresh labels went into the data folder, and split(n) of a new n reshuffled everything:
    100 more rows put 561 of v1's 1,066 test snippets into training. Fresh rows now only add to training
    (and to their own held-out set); the corpus's test and validation sets stay as they are."""
    texts, labels, _ = dataset
    before = data.subsets(texts, labels)
    for fresh in (fresh_reviews(100), fresh_reviews(3000)):
        after = data.subsets(texts, labels, fresh)
        assert after["test"] == before["test"] and after["validation"] == before["validation"]
        trained = len(after["train"][0]) - len(before["train"][0])
        assert after["train"][0][: len(before["train"][0])] == before["train"][0]
        assert trained + len(after["fresh_test"][0]) == len(fresh.texts)


def test_no_fresh_held_out_text_is_in_the_training_set(dataset):
    """The held-out share is decided by each text alone (its hash): about FRESH_HELD_OUT of the fresh rows,
    the same rows whatever else is added and in whatever order, never in training; a fresh row that repeats
    a held-out corpus snippet (up to case and spacing) is never trained on either."""
    texts, labels, _ = dataset
    fresh = fresh_reviews(2000)
    corpus_test = data.subsets(texts, labels)["test"][0]
    fresh.texts += [f"  {corpus_test[0].upper()} ", corpus_test[1]]
    fresh.labels += [1, 0]
    parts = data.subsets(texts, labels, fresh)
    held_out, trained = set(parts["fresh_test"][0]), set(parts["train"][0])
    assert not held_out & trained
    assert abs(len(held_out) / len(fresh.texts) - data.FRESH_HELD_OUT) < 0.03  # 2,002 draws: 3.4 standard errors
    assert fresh.texts[-2] not in trained and fresh.texts[-1] not in trained
    # the same decision for each text with other fresh rows around it, in another order
    more = fresh_reviews(500, start=1500)
    more.texts, more.labels = more.texts[::-1], more.labels[::-1]
    again = set(data.subsets(texts, labels, more)["fresh_test"][0])
    assert again == {t for t in more.texts if t in held_out}
    # and sentiment/ops/evaluate.py --held-out scores exactly these rows
    assert data.held_out_rows(fresh.texts[:2000], fresh.labels[:2000]) == tuple(
        [part[i] for i, t in enumerate(fresh.texts[:2000]) if t in held_out] for part in (fresh.texts, fresh.labels))


def test_v1_never_trains_on_held_out_fresh_labels(small):
    """Through nbsvm.train: a made-up word of every fresh text it trained on (twice, MIN_COUNT) is in the
    vocabulary, none of a held-out one's; the held-out share is scored on its own (metrics "fresh_test")."""
    fresh = fresh_reviews(200)
    model, _, vocab, metrics = nbsvm.train(*small, seed=1, fresh=fresh)
    words = {made_up_word(i): text for i, text in enumerate(fresh.texts)}
    held_out = {word for word, text in words.items() if data.is_held_out(text)}
    assert 20 < len(held_out) < 60
    assert not held_out & set(vocab)
    assert words.keys() - held_out <= set(vocab)
    assert metrics["fresh"]["held_out"] == metrics["fresh_test"]["size"] == len(held_out)
    assert metrics["train_size"] == len(data.split(len(small[0]))["train"]) + len(words) - len(held_out)


def test_v2_fine_tuning_never_trains_on_held_out_fresh_labels(small):
    """transformer.train takes its training texts from the same data.subsets: two steps on a small
    corpus with fresh rows, recording every text it tokenises for training."""
    subprocess.run(["make", "-s", "build/pretrained/model.safetensors"], cwd=pretrained.DEFAULT_DIR.parent.parent, check=True)
    tokenised = []

    class Recording(WordPieceEncoder):
        def token_ids(self, texts):
            tokenised.append(list(texts))
            return super().token_ids(texts)

    encoder = Recording(pretrained.DEFAULT_DIR / pretrained.TOKENIZER_FILE, transformer.MAX_LENGTH, transformer.HEAD_TOKENS)
    texts, labels = small[0][:200], small[1][:200]
    fresh = fresh_reviews(60)
    _, _, metrics = transformer.train(texts, labels, encoder, load_file(str(pretrained.verify())), seed=1, imdb=None, imdb_size=0,
                                            max_steps=2, eval_size=8, fresh=fresh)
    trained = set(tokenised[0])
    assert trained == set(data.subsets(texts, labels, fresh)["train"][0])
    assert {t for t in fresh.texts if data.is_held_out(t)}.isdisjoint(trained)
    assert metrics["fresh_test"]["size"] == sum(map(data.is_held_out, fresh.texts)) > 0
