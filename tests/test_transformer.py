"""v2, the transformer: its featuriser, its pretrained weights, its export, and its archive served by
a real TorchServe beside v1 through the same handler contract."""

import json

import pytest
import requests
import torch
from tokenizers import Tokenizer

from sentiment.training import pretrained
import quick_v2
from sentiment.serving.runtime import OnnxCore
from sentiment.training.export import held_out_texts, load_checkpoint
from sentiment.serving.core import TransformerClassifier, TransformerConfig, load_pretrained_encoder, predict_proba
from sentiment.serving.signature import MAX_CHARS, TRANSFORMER, Signature, load_encoder
from sentiment.serving.text import WordPieceEncoder

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

POSITIVE = "A gorgeous, moving film with a wonderful cast. I loved every minute of it."
NEGATIVE = "Dull, lifeless and far too long: a tedious waste of time."
REVIEW_WORDS = "the film is a joy to watch , funny and warm , with a cast that never puts a foot wrong . ".split()


@pytest.fixture(scope="module")
def store():
    return quick_v2.build()


@pytest.fixture(scope="module")
def v2_signature(store) -> Signature:
    return Signature.load(quick_v2.EXPORT)


@pytest.fixture(scope="module")
def wordpiece(v2_signature) -> WordPieceEncoder:
    return load_encoder(quick_v2.EXPORT, v2_signature)


# --- the featuriser ------------------------------------------------------------------------------


def reference_ids(text: str) -> list[int]:
    """The shipped tokenizer.json's own encoding ([CLS] ... [SEP]), padding dropped."""
    tokenizer = Tokenizer.from_file(str(quick_v2.EXPORT / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer.encode(text).ids


@pytest.mark.parametrize("text", [POSITIVE, NEGATIVE, "it's not a masterpiece , but i loved it !", "Ünïcödé café, naïve résumé"])
def test_ids_are_the_tokenizers_own(wordpiece, text):
    assert wordpiece.token_ids([text]) == [reference_ids(text)]


def test_accents_and_case_are_normalised_as_in_v1(wordpiece):
    assert wordpiece.token_ids(["CAFÉ Naïve"]) == wordpiece.token_ids(["cafe naive"])


def test_html_tags_are_blanked_without_moving_offsets(wordpiece):
    assert wordpiece.token_ids(["great<br />film"]) == wordpiece.token_ids(["great film"])
    assert wordpiece.token_ids(["<i>great</i> film"]) == wordpiece.token_ids(["great film"])


def test_padding_is_per_batch_and_masked(wordpiece):
    input_ids, attention_mask = wordpiece.inputs(["short", POSITIVE])
    lengths = [len(reference_ids("short")), len(reference_ids(POSITIVE))]
    assert input_ids.shape == attention_mask.shape == (2, max(lengths))
    assert attention_mask.sum(1).tolist() == lengths
    assert input_ids[0, lengths[0]:].eq(0).all() and input_ids.dtype == attention_mask.dtype == torch.int64


def test_a_batch_is_split_into_passes_of_similar_length(wordpiece):
    """A snippet is not padded to a long review's length: that made mixed TorchServe batches 3x slower."""
    texts = [" ".join(REVIEW_WORDS * 10), "ok", POSITIVE, "fine", " ".join(REVIEW_WORDS * 9), NEGATIVE]
    passes = list(wordpiece.chunks(texts))
    assert sorted(i for positions, _ in passes for i in positions) == list(range(len(texts)))
    for positions, (input_ids, attention_mask) in passes:
        lengths = attention_mask.sum(1).tolist()
        assert max(lengths) <= wordpiece.length_spread * min(lengths), (positions, lengths)
        assert input_ids.shape[1] == max(lengths)
    assert len(passes) == 3  # the two reviews, the two sentences, the two one-word texts


def test_long_text_keeps_its_head_and_tail(wordpiece, v2_signature):
    text = " ".join(REVIEW_WORDS * 40) + " in the end , a dreadful bore ."
    full = reference_ids(text)[1:-1]
    (kept,) = wordpiece.token_ids([text])
    head, tail = v2_signature.head_tokens, v2_signature.max_length - 2 - v2_signature.head_tokens
    assert len(full) > v2_signature.max_length and len(kept) == v2_signature.max_length
    cls, sep = reference_ids("")
    assert kept == [cls, *full[:head], *full[-tail:], sep]
    assert Tokenizer.from_file(str(quick_v2.EXPORT / "tokenizer.json")).decode(kept[-9:-1]) == "in the end, a dreadful bore."


# --- pretrained weights and the classifier -------------------------------------------------------


def test_other_weights_are_refused(tmp_path):
    (tmp_path / pretrained.WEIGHTS_FILE).write_bytes(b"not the model")
    (tmp_path / pretrained.TOKENIZER_FILE).write_text("{}")
    with pytest.raises(SystemExit, match="refusing to use it"):
        pretrained.verify(tmp_path)


def test_pretrained_weights_missing_a_layer_are_refused(store):
    from safetensors.torch import load_file

    weights = load_file(str(pretrained.verify()))
    del weights["encoder.layer.5.output.dense.weight"]
    with pytest.raises(ValueError, match="do not fit"):
        load_pretrained_encoder(TransformerClassifier(TransformerConfig()), weights)


PADDING_TOLERANCE = 1e-5  # logits; seen: 5e-7 (float32 sums over other shapes), while an ignored mask moves them by 0.8 to 2.8


def padded_to(rows: list[list[int]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of `rows` each padded to `length` with [PAD] (id 0), mask 0: what
    signature.json describes, and what an ONNX user gets from the shipped tokenizer padded to max_length."""
    input_ids = torch.zeros(len(rows), length, dtype=torch.int64)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.int64)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)], attention_mask[i, : len(row)] = torch.tensor(row), 1
    return input_ids, attention_mask


def v2_core(kind: str, signature: Signature):
    return torch.jit.load(str(quick_v2.EXPORT / "model.pt")) if kind == "torchscript" else OnnxCore(quick_v2.EXPORT / "model.onnx", signature)


@pytest.mark.parametrize("kind", ["torchscript", "onnx"])
def test_batch_equals_singles_and_padding_changes_nothing(store, v2_signature, wordpiece, kind):
    """Every text padded to max_length (256) tokens, as ONNX users pad, gives the logits it gets alone
    and unpadded (within PADDING_TOLERANCE), through the TorchScript and the ONNX core: "ok" is 3 real
    tokens and 253 [PAD]s. A core that ignored the attention mask would move those logits by ~1."""
    core = v2_core(kind, v2_signature)
    texts = [POSITIVE, "ok", NEGATIVE, " ".join(REVIEW_WORDS * 5), " ".join(REVIEW_WORDS * 20)]
    rows = wordpiece.token_ids(texts)
    assert [len(row) for row in rows] == [19, 3, 17, 112, v2_signature.max_length]  # heavy padding; the last is cut to fit
    # As an ONNX user pads: the shipped tokenizer.json padded to max_length gives the same ids and mask
    # (texts under max_length; the longest is cut head + tail by the featuriser, not by the tokenizer).
    users = Tokenizer.from_file(str(quick_v2.EXPORT / "tokenizer.json"))
    users.enable_padding(length=v2_signature.max_length, pad_id=0, pad_token="[PAD]")
    users.no_truncation()
    padded = padded_to(rows, v2_signature.max_length)
    encodings = users.encode_batch(texts[:-1])
    assert torch.equal(padded[0][:-1], torch.tensor([e.ids for e in encodings]))
    assert torch.equal(padded[1][:-1], torch.tensor([e.attention_mask for e in encodings]))
    with torch.inference_mode():
        alone = torch.cat([core(*wordpiece.inputs([text])) for text in texts])  # each text unpadded, its own length
        heavily_padded = core(*padded)
    assert (heavily_padded - alone).abs().max() < PADDING_TOLERANCE, (heavily_padded - alone).tolist()
    # The padding is heavy enough to matter: read as words, the [PAD]s move every padded text's logit.
    with torch.inference_mode():
        unmasked = core(padded[0], torch.ones_like(padded[1]))
    assert ((unmasked - alone).abs()[:-1] > 0.1).all(), (unmasked - alone).tolist()
    # predict_proba's own batching (texts of similar length in one pass, padded to its longest) agrees too.
    batched = predict_proba(core, texts, wordpiece)
    singles = torch.cat([predict_proba(core, [t], wordpiece) for t in texts])
    assert (batched - singles).abs().max() < 1e-5


# --- export --------------------------------------------------------------------------------------


def test_signature_describes_the_transformer(v2_signature):
    assert v2_signature.architecture == TRANSFORMER and v2_signature.version == "2"
    assert [spec["name"] for spec in v2_signature.inputs] == ["input_ids", "attention_mask"]
    assert v2_signature.tokenizer_file == "tokenizer.json" and v2_signature.features is None
    assert 0 < v2_signature.head_tokens < v2_signature.max_length <= 512


def test_torchscript_and_onnx_agree_with_eager_on_test_texts(store, v2_signature, wordpiece):
    model, _ = load_checkpoint(quick_v2.BUILD)
    metrics = json.loads((quick_v2.BUILD / "metrics.json").read_text())
    texts = held_out_texts(metrics)[:300]
    eager = predict_proba(model, texts, wordpiece)
    scripted = predict_proba(torch.jit.load(str(quick_v2.EXPORT / "model.pt")), texts, wordpiece)
    onnx = predict_proba(OnnxCore(quick_v2.EXPORT / "model.onnx", v2_signature), texts, wordpiece)
    assert (scripted - eager).abs().max() < 1e-4
    assert (onnx - eager).abs().max() < 1e-4


# --- served: v1 and v2 side by side on one TorchServe ------------------------------------------------


@pytest.fixture(scope="module")
def both(both_versions):
    return both_versions


def predict(ts, body, version: str, **kwargs) -> requests.Response:
    return requests.post(f"{ts.inference}/predictions/sentiment/{version}", timeout=60, **kwargs,
                         **({"json": body} if body is not None else {}))


def test_v1_and_v2_answer_side_by_side(both):
    for version in ("1", "2"):
        answer = predict(both, {"texts": [POSITIVE, NEGATIVE]}, version)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model_version"] == version
        assert [p["label"] for p in body["predictions"]] == ["positive", "negative"]


def test_v2_batch_equals_singles_and_every_form_works(both, v2_signature):
    """Within the signature's batch_tolerance: the int8 core's activation scales are per forward pass."""
    texts = [POSITIVE, NEGATIVE, "ok"]
    tolerance = 2 * v2_signature.batch_tolerance  # measured on export's probe texts, not every text's
    batch = [p["probability"] for p in predict(both, {"texts": texts}, "2").json()["predictions"]]
    singles = [predict(both, {"text": t}, "2").json()["probability"] for t in texts]
    plain = predict(both, None, "2", data=texts[0].encode(), headers={"Content-Type": "text/plain"}).json()
    v2 = predict(both, {"id": "7", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": texts}]}, "2").json()
    assert batch == pytest.approx(singles, abs=tolerance)
    assert plain["probability"] == pytest.approx(singles[0], abs=2e-6)  # the same text alone: the same forward pass
    assert v2["id"] == "7" and v2["outputs"][0]["data"] == pytest.approx(batch, abs=2e-6)


@pytest.mark.parametrize("body, kind", [
    ({"text": ""}, "empty_text"),
    ({"text": "x" * (MAX_CHARS + 1)}, "text_too_long"),
    ({"texts": []}, "too_many_texts"),
    ({"review": "x"}, "missing_text"),
    ({"text": 3}, "wrong_type"),
    ({"text": "a\x00b"}, "null_byte"),
])
def test_v2_bad_input_gets_the_same_400_as_v1(both, body, kind):
    answers = [predict(both, body, version) for version in ("1", "2")]
    assert [a.status_code for a in answers] == [400, 400]
    assert [a.json()["kind"] for a in answers] == [kind, kind]
