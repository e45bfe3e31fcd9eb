"""sentiment/serving/core.py: shapes, batching invariance and the naive-Bayes feature scale."""

import math

import pytest
import torch
from scipy import sparse

from sentiment import data

from sentiment.training import nbsvm
from sentiment.serving.core import ModelConfig, SentimentClassifier, naive_bayes_scale, to_tensors

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

TEXTS = [
    "A gorgeous, moving film with a wonderful cast.",
    "",  # empty bag
    "\u6771\u4eac \u2603",  # characters never seen in training, so no word or character gram: also an empty bag
    "Dull, lifeless and far too long.",
    "ok",
    "It's not a masterpiece, but I loved every minute of it!",
]


@pytest.fixture
def small_model() -> SentimentClassifier:
    torch.manual_seed(0)
    model = SentimentClassifier(ModelConfig(vocab_size=6), feature_scale=torch.tensor([1.0, -2.0, 0.5, 3.0, 1.0, 0.0]))
    with torch.no_grad():
        model.weight.weight.copy_(torch.randn(6, 1))
        model.bias.fill_(0.25)
    return model.eval()


@pytest.fixture(scope="module")
def scripted(export_dir, signature):
    return torch.jit.load(str(export_dir / signature.model_file)).eval()


@pytest.fixture(scope="module")
def eager(export_dir) -> SentimentClassifier:
    """The trained model as sentiment/training/nbsvm.py saved it (build/v1/checkpoint.pt), in eager mode: what model.pt was exported from."""
    checkpoint = torch.load(export_dir.parent / "checkpoint.pt", weights_only=True)
    model = SentimentClassifier(ModelConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


@pytest.fixture(scope="module")
def held_out():
    """The held-out test split's texts and labels (real reviews the model never trained on)."""
    texts, labels, _ = data.load_dataset()
    test = data.split(len(texts))["test"]
    return [texts[i] for i in test], [labels[i] for i in test]


def test_to_tensors_are_int64():
    ids, offsets = to_tensors([3, 1, 4], [0, 2])
    assert ids.dtype == offsets.dtype == torch.int64
    assert ids.tolist() == [3, 1, 4] and offsets.tolist() == [0, 2]


def test_small_model_mixed_lengths_shapes_and_values(small_model):
    ids, offsets = to_tensors([0, 1, 2, 3, 3], [0, 1, 1, 4])  # bags: [0], [], [1 2 3], [3]
    with torch.no_grad():
        logits = small_model(ids, offsets)
        w, s, b = small_model.weight.weight[:, 0], small_model.feature_scale, small_model.bias.item()
        expected = [w[0] * s[0] + b, b, (w[1:4] * s[1:4]).sum() + b, w[3] * s[3] + b]
    assert logits.shape == (4,) and logits.dtype == torch.float32
    assert logits.tolist() == pytest.approx([float(e) for e in expected], abs=1e-6)
    assert logits[1].item() == pytest.approx(b)  # the empty bag scores the bias alone


def test_new_model_is_neutral_and_has_no_training_only_state():
    model = SentimentClassifier(ModelConfig(vocab_size=4))
    assert set(model.state_dict()) == {"weight.weight", "bias", "feature_scale"}
    assert torch.equal(model.feature_scale, torch.ones(4))
    with torch.no_grad():
        assert model(*to_tensors([0, 1, 2], [0, 2])).tolist() == [0.0, 0.0]


def test_exported_core_shapes_for_mixed_batch_with_empty_bags(scripted, encoder):
    ids, offsets = to_tensors(*encoder.batch(TEXTS))
    assert offsets.tolist()[1] == offsets.tolist()[2] == offsets.tolist()[3]  # texts 1 and 2 encode to nothing
    with torch.inference_mode():
        logits = scripted(ids, offsets)
    assert logits.shape == (len(TEXTS),)
    assert torch.isfinite(logits).all()
    bias = scripted.bias.item()
    assert logits[1].item() == pytest.approx(bias) and logits[2].item() == pytest.approx(bias)


def test_exported_core_batch_equals_texts_one_by_one(scripted, encoder):
    with torch.inference_mode():
        batched = scripted(*to_tensors(*encoder.batch(TEXTS)))
        single = torch.cat([scripted(*to_tensors(*encoder.batch([t]))) for t in TEXTS])
        reordered = scripted(*to_tensors(*encoder.batch(TEXTS[::-1])))
    assert torch.allclose(batched, single, atol=1e-6, rtol=0)
    assert torch.allclose(batched, reordered.flip(0), atol=1e-6, rtol=0)


def test_unknown_words_are_scored_by_their_known_character_grams(scripted, vocab_index, encoder):
    ids = encoder("zorblax quuxly")
    assert ids  # no word of it is known, but character grams of it are
    vocab = {i: g for g, i in vocab_index.items()}
    assert all(vocab[i].startswith("c:") for i in ids)
    assert "zorblax" not in vocab_index and "quuxly" not in vocab_index


def test_exported_core_all_empty_batch_scores_the_bias(scripted):
    with torch.inference_mode():
        logits = scripted(*to_tensors([], [0, 0, 0]))
    assert logits.tolist() == pytest.approx([scripted.bias.item()] * 3)


def counts(bags: list[list[int]], vocab_size: int) -> sparse.csr_matrix:
    """Bags of feature ids as nbsvm.bag_matrix gives them: texts x features, each feature's count."""
    rows = [i for i, bag in enumerate(bags) for _ in bag]
    return sparse.csr_matrix(([1.0] * len(rows), (rows, [f for bag in bags for f in bag])), shape=(len(bags), vocab_size))


def test_naive_bayes_scale_signs():
    # feature 0 only in positive texts, 1 only in negative, 2 in every text, 3 never seen
    bags = [[0, 2], [0, 2], [1, 2], [1, 2]]
    labels = [1, 1, 0, 0]
    scale = naive_bayes_scale(counts(bags, 4), labels)
    assert scale.shape == (4,) and scale.dtype == torch.float32
    assert scale[0] > 0 > scale[1]
    assert scale[0].item() == pytest.approx(-scale[1].item())
    assert scale[2].item() == pytest.approx(0.0, abs=1e-7)
    assert scale[3].item() == pytest.approx(0.0, abs=1e-7)
    # smoothed counts, alpha=1: positive row [3, 1, 3, 1], negative row [1, 3, 3, 1], both total 8
    assert scale[0].item() == pytest.approx(math.log(3 / 1), rel=1e-6)


def test_naive_bayes_scale_counts_presence_not_repeats():
    once = naive_bayes_scale(counts([[0], [1]], 2), [1, 0])
    repeated = naive_bayes_scale(counts([[0, 0, 0, 0], [1]], 2), [1, 0])
    assert torch.equal(once, repeated)


def test_exported_feature_scale_signs_follow_sentiment_words(scripted, vocab_index, encoder):
    scale = scripted.feature_scale
    for word in ("wonderful", "beautiful", "moving"):
        assert scale[vocab_index[word]] > 0, word
    for word in ("dull", "boring", "mess"):
        assert scale[vocab_index[word]] < 0, word
    # and the whole core agrees: positive reviews score higher than negative ones
    with torch.inference_mode():
        pos, neg = scripted(*to_tensors(*encoder.batch([TEXTS[0], TEXTS[3]])))
    assert pos > 0 > neg
    assert encoder(TEXTS[0])  # sanity: the review is not an empty bag


def test_exported_core_scores_real_reviews_as_the_eager_model_does(scripted, eager, encoder, held_out, signature):
    """model.pt (TorchScript, as the handler loads it) and the trained eager model give the same logits on
    the 1,066 held-out reviews and the texts above, and the exported core has the accuracy the signature records."""
    texts, labels = held_out
    texts = texts + TEXTS
    assert isinstance(scripted, torch.jit.ScriptModule) and not isinstance(eager, torch.jit.ScriptModule)
    with torch.inference_mode():
        inputs = to_tensors(*encoder.batch(texts))
        exported, trained = scripted(*inputs), eager(*inputs)
        one_by_one = torch.cat([scripted(*to_tensors(*encoder.batch([t]))) for t in texts[:50]])
    assert exported.shape == trained.shape == (len(texts),)
    assert torch.allclose(exported, trained, atol=1e-5, rtol=0), (exported - trained).abs().max().item()
    assert torch.allclose(one_by_one, trained[:50], atol=1e-5, rtol=0)
    assert trained.std() > 1  # real scores, not a constant: the comparison means something
    predicted = (torch.sigmoid(exported[: len(labels)]) >= signature.threshold).long()
    accuracy = (predicted == torch.tensor(labels)).float().mean().item()
    assert round(accuracy, 4) == signature.metrics["test"]["accuracy"]
