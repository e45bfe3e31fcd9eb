"""handler.py without a server: the shipped archive unpacked, TorchServe's own Context, RequestProcessor,
metrics cache and wire decoding, and `handle` called the way a backend worker calls it."""

import json
import logging
import zipfile
from pathlib import Path

import pytest
import torch
from ts.context import Context
from ts.service import Service
from ts.utils.util import list_classes_from_module

import handler as handler_module
from sentiment.serving.handler import SentimentHandler
from sentiment.serving.core import to_tensors
from sentiment.serving.signature import MAX_CHARS
from bench.worker_message import MessageSocket, handle, load_handler, predict_message

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent
MAR = ROOT / "model_store" / "sentiment.mar"

POSITIVE = [
    "A gorgeous, moving film with a wonderful cast.",
    "One of the most beautiful and touching films of the year; a delight from start to finish.",
    "It's a masterpiece: funny, warm and brilliantly acted.",
]
NEGATIVE = [
    "Dull, lifeless and far too long.",
    "A boring, incoherent mess with a terrible script.",
    "The worst film I have seen in years: tedious and stupid.",
]


# --- a backend worker, minus the sockets ------------------------------------------------------------

def wire_request(i: int, request: dict) -> dict:
    """A test request ({"body": dict | list | str | bytes, "headers", "name", "content_type"}) as
    worker_message.predict_message takes it: the body as bytes, JSON-encoded if it is an object."""
    body = request["body"]
    body = json.dumps(body).encode() if isinstance(body, (dict, list)) else body.encode() if isinstance(body, str) else body
    return {**request, "id": f"req-{i}", "body": body}


def run_batch(handler: SentimentHandler, context: Context, requests: list[dict]) -> list:
    """As a backend worker: frontend bytes -> TorchServe's own decoding -> handler.handle -> the answers."""
    return handle(handler, context, [wire_request(i, r) for i, r in enumerate(requests)])


def status(context: Context, idx: int) -> int:
    return context.get_response_status(idx)[0]


def json_request(body, content_type="application/json") -> dict:
    return {"content_type": content_type, "body": body}


@pytest.fixture(scope="module")
def model_dir(export_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sentiment_mar")
    with zipfile.ZipFile(MAR) as archive:
        archive.extractall(folder)
    return folder


@pytest.fixture(scope="module")
def manifest(model_dir) -> dict:
    return json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())


@pytest.fixture(scope="module")
def loaded(model_dir, manifest):
    """A SentimentHandler initialised the way TorchServe's model loader does it (Service builds the Context)."""
    threads = torch.get_num_threads()
    yield load_handler(model_dir, batch_size=16)
    torch.set_num_threads(threads)  # initialize() pins the process to one thread; give the other tests theirs back


@pytest.fixture
def handler(loaded):
    return loaded[0]


@pytest.fixture
def context(loaded):
    return loaded[1]


# --- the archive and loading -----------------------------------------------------------------------

def test_manifest_names_the_torchscript_core_and_handler(manifest, model_dir, signature):
    assert manifest["model"]["modelName"] == signature.model_name
    assert manifest["model"]["serializedFile"] == signature.model_file
    assert manifest["model"]["handler"] == "handler.py"
    assert manifest["model"]["modelVersion"] == signature.version
    for name in ("handler.py", "sentiment/serving/handler.py", "signature.json", "vocab.json", signature.model_file):
        assert (model_dir / name).is_file(), name


def test_archive_ships_the_current_sources_and_artifact(model_dir, export_dir, signature):
    for name in ["handler.py", *(str(p.relative_to(ROOT)) for p in (ROOT / "sentiment" / "serving").glob("*.py"))]:
        assert (model_dir / name).read_bytes() == (ROOT / name).read_bytes(), f"{name} in the .mar is stale"
    for name in ("signature.json", signature.vocab_file, signature.model_file):
        assert (model_dir / name).read_bytes() == (export_dir / name).read_bytes(), name


def test_handler_module_defines_exactly_one_class():
    """TorchServe's loader refuses a handler module with more than one class of its own."""
    assert list_classes_from_module(handler_module) == [handler_module.SentimentHandler]
    assert issubclass(handler_module.SentimentHandler, SentimentHandler)


def test_initialize_loads_core_signature_and_vocabulary(handler, signature, vocab_index):
    assert handler.initialized
    assert handler.signature == signature
    assert handler.encoder.index == vocab_index and handler.encoder.features == signature.features
    assert isinstance(handler.model, torch.jit.ScriptModule) and not handler.model.training
    assert handler.model.weight.num_embeddings == len(vocab_index)


# --- one batch, many requests ----------------------------------------------------------------------

def test_mixed_batch_one_response_per_request_in_order(handler, context, signature):
    requests = [
        json_request({"text": POSITIVE[0]}),
        json_request(b'{"text": "unterminated'),  # TorchServe could not parse it and forwards the bytes
        json_request({"texts": [POSITIVE[1], NEGATIVE[1]]}),
        {"content_type": "text/plain", "body": NEGATIVE[0]},
    ]
    responses = run_batch(handler, context, requests)

    assert [status(context, i) for i in range(4)] == [200, 400, 200, 200]
    bad = responses[1]
    assert bad["code"] == 400 and bad["type"] == "BadRequest" and bad["kind"] == "invalid_json"
    assert "not valid JSON" in bad["message"]
    assert context.get_response_status(1)[1] == bad["message"]  # the reason phrase names the problem too

    single, listed, plain = responses[0], responses[2], responses[3]
    assert set(single) == {"label", "probability", "model_version"}
    assert set(listed) == {"predictions", "model_version"} and len(listed["predictions"]) == 2
    predictions = [single, *listed["predictions"], plain]
    for prediction in predictions:
        assert 0.0 <= prediction["probability"] <= 1.0
        assert prediction["label"] == ("positive" if prediction["probability"] >= signature.threshold else "negative")
    for response in (single, listed, plain):
        assert response["model_version"] == signature.version

    pos_single, pos_listed, neg_listed, neg_plain = (p["probability"] for p in predictions)
    assert min(pos_single, pos_listed) > max(neg_listed, neg_plain)
    assert [p["label"] for p in predictions] == ["positive", "positive", "negative", "negative"]


def test_positive_reviews_score_higher_than_negative_ones(handler, context):
    responses = run_batch(handler, context, [json_request({"texts": POSITIVE + NEGATIVE})])
    probabilities = [p["probability"] for p in responses[0]["predictions"]]
    assert min(probabilities[: len(POSITIVE)]) > 0.5 > max(probabilities[len(POSITIVE):])


def test_probabilities_are_the_exported_core_on_text_py_encoding(handler, context, model_dir, signature, encoder):
    core = torch.jit.load(str(model_dir / signature.model_file))
    texts = POSITIVE + NEGATIVE + ["zorblax", "\u6771\u4eac"]  # an unknown word (char grams only); an empty bag
    ids, offsets = encoder.batch(texts)
    assert offsets[-1] == len(ids) and offsets[-2] < offsets[-1]  # the last text scores the bias alone
    with torch.inference_mode():
        raw = torch.sigmoid(core(*to_tensors(ids, offsets))).tolist()
    expected = [signature.calibrate(p, n) for p, n in zip(raw, encoder.lengths(texts))]  # the map reads the words the model reads
    responses = run_batch(handler, context, [json_request({"text": t}) for t in texts])
    assert [r["probability"] for r in responses] == pytest.approx(expected, abs=1e-6)


def test_a_request_gets_the_same_answer_alone_or_batched(handler, context):
    alone = run_batch(handler, context, [json_request({"text": POSITIVE[2]})])[0]
    batched = run_batch(handler, context, [json_request({"texts": NEGATIVE}), json_request({"text": POSITIVE[2]}),
                                           {"content_type": "text/plain", "body": "meh"}])[1]
    assert alone == batched


@pytest.mark.parametrize(
    "request_, expected",
    [
        (json_request({"text": "Très bien, un film magnifique"}, "application/json; charset=utf-8"), 200),
        ({"content_type": "text/plain; charset=utf-8", "body": "Ein wunderbarer Film"}, 200),
        (json_request({"text": "ok"}, "Application/JSON"), 200),
        ({"content_type": "text/plain", "body": b"caf\xe9"}, "invalid_utf8"),  # latin-1 bytes are not UTF-8
        ({"content_type": "application/octet-stream", "body": b"a fine film"}, "unsupported_content_type"),
        ({"content_type": None, "body": b'{"text": "a fine film"}'}, "unsupported_content_type"),
        ({"name": "text", "content_type": None, "body": "a fine film"}, "unsupported_content_type"),  # a form field, no body
    ],
)
def test_content_types_as_torchserve_delivers_them(handler, context, request_, expected):
    """`expected`: 200, or the one error kind of the 400 answer."""
    responses = run_batch(handler, context, [request_, json_request({"text": "fine"})])
    assert status(context, 1) == 200
    if expected == 200:
        assert status(context, 0) == 200
        assert 0.0 <= responses[0]["probability"] <= 1.0
    else:
        assert status(context, 0) == 400 and responses[0]["code"] == 400
        assert responses[0]["kind"] == expected


def test_batch_of_only_bad_requests(handler, context):
    requests = [
        json_request({}),
        json_request({"text": "   "}),
        json_request({"texts": []}),
        json_request({"text": "x" * (MAX_CHARS + 1)}),
        json_request([1, 2]),
        {"content_type": "text/plain", "body": ""},
    ]
    responses = run_batch(handler, context, requests)
    assert [r["kind"] for r in responses] == ["missing_text", "empty_text", "too_many_texts", "text_too_long",
                                              "wrong_type", "empty_body"]
    assert all(status(context, i) == 400 and responses[i]["code"] == 400 for i in range(len(requests)))


@pytest.mark.parametrize(
    "body, kind",
    [
        (b"null", "wrong_type"),  # TorchServe decodes it to None
        (b"", "empty_body"),  # TorchServe cannot decode it and forwards the empty bytes
        (b"   ", "invalid_json"),
    ],
)
def test_json_null_and_empty_json_bodies_as_torchserve_delivers_them(handler, context, body, kind):
    responses = run_batch(handler, context, [json_request(body), json_request({"text": POSITIVE[0]})])
    assert [status(context, i) for i in range(2)] == [400, 200]
    assert responses[0]["kind"] == kind and responses[1]["label"] == "positive"


def test_kserve_v2_request_in_a_batch(handler, context, signature):
    v2 = {"id": "abc", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": [POSITIVE[0], NEGATIVE[0]]}]}
    responses = run_batch(handler, context, [json_request({"text": NEGATIVE[2]}), json_request(v2)])
    body = responses[1]
    assert status(context, 1) == 200
    assert body["id"] == "abc" and body["model_name"] == signature.model_name and body["model_version"] == signature.version
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["probability"]["shape"] == outputs["label"]["shape"] == [2]
    pos, neg = outputs["probability"]["data"]
    assert pos > signature.threshold > neg
    assert outputs["label"]["data"] == ["positive", "negative"]


def test_a_pathological_body_fails_only_its_own_request(handler, context):
    """Regression: a deeply nested JSON body raised RecursionError in parse_request and failed the whole batch."""
    responses = run_batch(handler, context, [json_request({"text": POSITIVE[0]}), json_request(b"[" * 100_000),
                                             json_request({"text": NEGATIVE[0]})])
    assert [status(context, i) for i in range(3)] == [200, 400, 200]
    assert responses[0]["label"] == "positive" and responses[2]["label"] == "negative"
    assert responses[1]["code"] == 400 and responses[1]["kind"] == "invalid_json"


def test_an_inference_failure_fails_only_its_own_request(handler, context, vocab_index, monkeypatch):
    poison = vocab_index["dull"]
    core = handler.core

    def fragile(ids, offsets):
        if (ids == poison).any():
            raise RuntimeError("poisoned")
        return core(ids, offsets)

    monkeypatch.setattr(handler, "core", fragile)
    responses = run_batch(handler, context, [
        json_request({"text": POSITIVE[0]}),
        json_request({"text": NEGATIVE[0]}),  # "dull, lifeless ..."
        json_request({"text": "  "}),
    ])
    assert [status(context, i) for i in range(3)] == [200, 500, 400]
    assert responses[0]["label"] == "positive"
    assert responses[1] == {"code": 500, "type": "InternalServerError", "kind": "inference_error",
                            "message": "inference failed: RuntimeError"}
    assert responses[2]["kind"] == "empty_text"


def test_prediction_metrics_are_emitted(handler, context, caplog):
    with caplog.at_level(logging.INFO, logger="ts.metrics"):
        run_batch(handler, context, [json_request({"texts": [POSITIVE[0], NEGATIVE[0]]}), json_request({"text": 5})])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[METRICS]")]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a metric update was rejected"
    assert any(line.startswith("[METRICS]SentimentPredictions.") and "Label:positive" in line for line in lines)
    assert any(line.startswith("[METRICS]SentimentPredictions.") and "Label:negative" in line for line in lines)
    assert any(line.startswith("[METRICS]SentimentRequestErrors.") and "Kind:wrong_type" in line for line in lines)
    # the two texts' probabilities as bin counts, one line a bin hit (a histogram took one line a text)
    bins = [line for line in lines if line.startswith("[METRICS]SentimentProbabilityBin.")]
    assert sum(float(line.split(":", 1)[1].split("|", 1)[0]) for line in bins) == 2 and 1 <= len(bins) <= 2, bins
    assert sum(line.startswith("[METRICS]SentimentProbabilitySum.") for line in lines) == 1
    assert any(line.startswith("[METRICS]HandlerTime.") for line in lines)
