"""train.py: the data, the fixed split, deterministic training and a quick accuracy sanity check."""

import hashlib
import random
import re

import pytest
import torch

import train
from text import Encoder, Features, tokenize

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
    return train.load_dataset()


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
    readme = (train.DATA_DIR / "README.md").read_text()
    for name, digest in README_MD5.items():
        assert re.search(rf"`{re.escape(name)}` {digest}", readme)
        assert hashlib.md5((train.DATA_DIR / name).read_bytes()).hexdigest() == digest


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
        raw = (train.DATA_DIR / name).read_bytes()
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
    parts = train.split(n)
    test, val, rest = (set(parts[k]) for k in ("test", "validation", "train"))
    assert not (test & val) and not (test & rest) and not (val & rest)
    assert test | val | rest == set(range(n))
    assert sum(len(v) for v in parts.values()) == n  # no duplicates within a part either
    assert len(parts["test"]) == int(n * train.TEST_FRACTION)
    assert len(parts["validation"]) == int(n * train.VALIDATION_FRACTION)


def test_split_is_fixed_across_calls_and_independent_of_the_global_rng():
    first = train.split(N_ROWS)
    random.seed(999)
    torch.manual_seed(999)
    assert train.split(N_ROWS) == first
    assert first["test"][:5] == train.split(N_ROWS)["test"][:5]


# --- training -------------------------------------------------------------------------------------

def test_training_is_deterministic_for_a_fixed_seed(small):
    model_a, config_a, vocab_a, metrics_a = train.train(*small, seed=7, epochs=2)
    model_b, config_b, vocab_b, metrics_b = train.train(*small, seed=7, epochs=2)
    assert config_a == config_b and vocab_a == vocab_b
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name
    assert metrics_a == metrics_b
    # and the seed matters: another seed (another batch order) learns different weights
    model_c, _, vocab_c, _ = train.train(*small, seed=8, epochs=2)
    assert vocab_c == vocab_a  # the vocabulary only depends on the fixed split
    assert not torch.equal(model_c.weight.weight, model_a.weight.weight)


def test_short_training_run_clears_the_sanity_bar_on_held_out_data(dataset):
    texts, labels, _ = dataset
    model, config, vocab, metrics = train.train(texts, labels, seed=1, epochs=1)
    assert not model.training
    assert config.vocab_size == len(vocab) == model.weight.num_embeddings
    assert any(g.startswith("c:") for g in vocab)  # trained on train.FEATURES: character grams too
    assert metrics["best_epoch"] == 1
    assert metrics["test"]["size"] == len(train.split(len(texts))["test"])
    assert metrics["test"]["accuracy"] > 0.7
    # the reported number is the held-out one: recompute it independently on the fixed test split
    encoder = Encoder({g: i for i, g in enumerate(vocab)}, train.FEATURES)
    test_idx = train.split(len(texts))["test"]
    probs = train.predict_proba(model, [texts[i] for i in test_idx], encoder)
    accuracy = ((probs >= 0.5).long() == torch.tensor([labels[i] for i in test_idx])).float().mean().item()
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-4)
    # no test text leaked into the vocabulary's training texts: the split's train part has none of them
    assert not set(test_idx) & set(train.split(len(texts))["train"])


def test_evaluate_scores_a_known_core():

    def core(ids, offsets):  # +2 per "good", -2 per "bad"
        signs = torch.tensor([2.0, -2.0])
        bounds = offsets.tolist() + [len(ids)]
        return torch.stack([signs[ids[bounds[i] : bounds[i + 1]]].sum() for i in range(len(offsets))])

    # logits 4, 2, -2, 0 -> probabilities .98, .88, .12, .5: the last one is called positive (>= threshold)
    words = Encoder({"good": 0, "bad": 1}, Features(word_ngram=1))  # no character grams: dropped at encode time
    metrics = train.evaluate(core, ["good good", "good", "bad", "good bad"], [1, 1, 0, 0], words)
    assert metrics == {"accuracy": 0.75, "roc_auc": 1.0, "size": 4}
    # a higher threshold calls the 0.5 one negative
    assert train.evaluate(core, ["good bad", "good good"], [0, 1], words, threshold=0.6)["accuracy"] == 1.0
