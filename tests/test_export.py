"""export.py and sentiment/serving/signature.py: the exported cores match the eager model; signature.json is the full contract."""

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from sentiment.serving.core import predict_proba
from sentiment.serving.runtime import OnnxCore
from sentiment.training import export
from sentiment import data
from sentiment.training import nbsvm
from sentiment.serving.signature import SIGNATURE_FILE, Signature, load_vocab_index
from sentiment.serving.text import Features, build_vocab

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_DIR = ROOT / "build" / "v1"
DATA_README = data.DATA_DIR / "README.md"


@pytest.fixture(scope="module")
def eager(export_dir):
    model, checkpoint = export.load_checkpoint(CHECKPOINT_DIR)
    return model, Features(**checkpoint["features"])


def onnx_predict_proba(export_dir, signature, texts, encoder):
    return predict_proba(OnnxCore(export_dir / signature.onnx_file, signature), texts, encoder)


@pytest.fixture(scope="module")
def test_split():
    texts, labels, _ = data.load_dataset()
    idx = data.split(len(texts))["test"]
    return [texts[i] for i in idx], [labels[i] for i in idx]


@pytest.fixture(scope="module")
def eager_probs(eager, test_split, encoder):
    return predict_proba(eager[0], test_split[0], encoder)


# --- vocabulary -----------------------------------------------------------------------------------

def test_export_vocab_is_the_checkpoint_vocab(export_dir, signature):
    assert (export_dir / signature.vocab_file).read_bytes() == (CHECKPOINT_DIR / "vocab.json").read_bytes()


def test_vocab_is_rebuilt_from_the_training_texts_by_text_py(signature, vocab_index):
    """The shipped vocabulary is what today's sentiment/serving/text.py makes of the training rows (rt-polarity's training
    split, and IMDB train's rows when v1 was trained on it: issue 25) under signature.features, capped at
    nbsvm.MAX_VOCAB."""
    texts, labels, _ = data.load_dataset()
    imdb = data.load_imdb("train")[:2] if "imdb_md5" in signature.metrics else None
    train_texts = data.subsets(texts, labels, imdb=imdb)["train"][0]
    assert build_vocab(train_texts, signature.features, nbsvm.MIN_COUNT, nbsvm.MAX_VOCAB) == list(vocab_index)
    chars = [g for g in vocab_index if g.startswith("c:")]
    assert chars and len(chars) < len(vocab_index)  # word and character grams both
    assert {"wonderful", "c: wond", "c:ful "} <= set(vocab_index)


# --- parity ---------------------------------------------------------------------------------------

def test_torchscript_matches_eager_on_test_split(export_dir, signature, encoder, test_split, eager_probs):
    scripted = torch.jit.load(str(export_dir / signature.model_file))
    assert not scripted.training  # exported in eval mode
    probs = predict_proba(scripted, test_split[0], encoder)
    assert probs.shape == eager_probs.shape == (len(test_split[0]),)
    assert (probs - eager_probs).abs().max().item() < export.PARITY_TOLERANCE[signature.architecture]


def test_onnx_matches_eager_on_test_split(export_dir, signature, encoder, test_split, eager_probs):
    probs = onnx_predict_proba(export_dir, signature, test_split[0], encoder)
    assert probs.shape == eager_probs.shape
    assert (probs - eager_probs).abs().max().item() < export.PARITY_TOLERANCE[signature.architecture]


def test_onnx_handles_empty_bags_and_a_single_text(export_dir, signature, encoder, eager):
    texts = ["", "a fine film", "zorblax", "\u6771\u4eac", "dull"]  # the first and fourth are empty bags
    assert encoder.batch(texts)[1][3] == encoder.batch(texts)[1][4]
    onnx = onnx_predict_proba(export_dir, signature, texts, encoder)
    assert (onnx - predict_proba(eager[0], texts, encoder)).abs().max().item() < 1e-5
    single = onnx_predict_proba(export_dir, signature, ["dull"], encoder)
    assert single.shape == (1,) and single.item() == pytest.approx(onnx[4].item(), abs=1e-6)


def test_onnx_graph_uses_the_signature_names_and_dtypes(export_dir, signature):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(export_dir / signature.onnx_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [i["name"] for i in signature.inputs]
    assert [o.name for o in session.get_outputs()] == [o["name"] for o in signature.outputs]
    assert [i.type for i in session.get_inputs()] == ["tensor(int64)", "tensor(int64)"]
    assert [o.type for o in session.get_outputs()] == ["tensor(float)"]


def test_torchscript_core_carries_no_training_state(export_dir, signature, eager):
    scripted = torch.jit.load(str(export_dir / signature.model_file))
    state = scripted.state_dict()
    assert set(state) == {"weight.weight", "bias", "feature_scale"}
    for name, tensor in eager[0].state_dict().items():
        assert torch.equal(state[name], tensor), name


def test_recorded_test_metrics_are_reproducible(signature, eager, test_split, encoder):
    """signature.json's held-out accuracy is what the shipped vocabulary + sentiment/serving/text.py + checkpoint score today."""
    metrics = nbsvm.evaluate(eager[0], *test_split, encoder, threshold=signature.threshold)
    assert metrics == signature.metrics["test"]


# --- signature.json -------------------------------------------------------------------------------

def test_signature_round_trips(export_dir, signature, tmp_path):
    signature.save(tmp_path)
    again = Signature.load(tmp_path)
    assert again == signature
    assert isinstance(again.labels, tuple)
    assert isinstance(again.features, Features) and again.features == signature.features
    assert json.loads((tmp_path / SIGNATURE_FILE).read_text()) == json.loads((export_dir / SIGNATURE_FILE).read_text())


def test_signature_names_everything_the_handler_needs(export_dir, signature, eager):
    raw = json.loads((export_dir / SIGNATURE_FILE).read_text())
    assert set(raw) == set(asdict(signature))  # no field silently missing or extra
    for file in (signature.model_file, signature.onnx_file, signature.vocab_file):
        assert (export_dir / file).is_file(), file
    assert signature.model_file == "model.pt" and signature.vocab_file == "vocab.json"
    assert signature.labels == ("negative", "positive")
    assert 0 < signature.threshold < 1
    assert isinstance(signature.features, Features)
    assert signature.features == eager[1] == nbsvm.FEATURES  # the checkpoint's features, the ones training used
    assert raw["features"] == {"word_ngram": 2, "char_low": 2, "char_high": 5}
    assert isinstance(signature.max_chars, int) and signature.max_chars > 0
    assert isinstance(signature.max_texts, int) and signature.max_texts > 0
    assert [i["name"] for i in signature.inputs] == ["ids", "offsets"]
    assert [i["dtype"] for i in signature.inputs] == ["int64", "int64"]
    assert [o["name"] for o in signature.outputs] == ["logit"]
    assert isinstance(signature.version, str) and signature.version == "1"
    assert signature.model_name == "sentiment"
    assert len(load_vocab_index(export_dir, signature)) == eager[0].weight.num_embeddings


def test_signature_data_md5_matches_the_data_and_its_readme(signature):
    _, _, md5 = data.load_dataset()
    assert signature.data_md5 == md5
    readme = DATA_README.read_text()
    for name, digest in md5.items():
        assert re.search(rf"`{re.escape(name)}` {digest}", readme), name


def test_signature_metrics_clear_the_accuracy_bar(signature, test_split):
    test = signature.metrics["test"]
    assert test["accuracy"] >= 0.78
    assert test["roc_auc"] >= 0.85
    assert test["size"] == len(test_split[1])
    assert signature.metrics["split_seed"] == data.SPLIT_SEED


def test_signature_label_applies_the_threshold(signature):
    assert signature.label(signature.threshold) == "positive"
    assert signature.label(signature.threshold - 1e-6) == "negative"
    assert signature.label(1.0) == "positive" and signature.label(0.0) == "negative"
