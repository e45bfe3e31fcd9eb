"""sentiment/serving/payload.py: every request body shape TorchServe can hand the handler, and the 400s clients get back."""

import json

import pytest

from sentiment.serving.payload import BadRequest, Parsed, RequestError, parse_request, response_body
from sentiment.serving.signature import Signature
from sentiment.serving.text import Features

JSON = "application/json"
PLAIN = "text/plain"


@pytest.fixture
def sig() -> Signature:
    """Small limits so the boundaries are cheap to hit; the defaults are checked separately."""
    return Signature(model_name="sentiment", version="test", features=Features(), metrics={}, data_md5={}, max_chars=40, max_texts=3)


def rejected(body, content_type, sig) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_request(body, content_type, sig)
    return info.value


# --- accepted -------------------------------------------------------------------------------------

def test_json_text_object(sig):
    parsed = parse_request({"text": "A fine film."}, JSON, sig)
    assert parsed == Parsed(texts=["A fine film."], form="text")


def test_json_texts_list(sig):
    parsed = parse_request({"texts": ["good", "bad"]}, JSON, sig)
    assert parsed == Parsed(texts=["good", "bad"], form="texts")


def test_json_texts_list_of_one_is_still_a_list(sig):
    assert parse_request({"texts": ["good"]}, JSON, sig).form == "texts"


def test_json_texts_exactly_max_texts_is_accepted(sig):
    texts = [f"review {i}" for i in range(sig.max_texts)]
    assert parse_request({"texts": texts}, JSON, sig).texts == texts


def test_text_exactly_max_chars_is_accepted(sig):
    text = "x" * sig.max_chars
    assert parse_request({"text": text}, JSON, sig).texts == [text]


def test_plain_text_str_body(sig):
    assert parse_request("It's GREAT!", PLAIN, sig) == Parsed(texts=["It's GREAT!"], form="text")


def test_plain_text_bytes_body_is_decoded_as_utf8(sig):
    assert parse_request("Amélie — charmant".encode(), PLAIN, sig).texts == ["Amélie — charmant"]


@pytest.mark.parametrize("body", [b'{"text": "A fine film."}', bytearray(b'{"text": "A fine film."}')])
def test_json_bytes_body_is_parsed(sig, body):
    # TorchServe forwards bytes (a bytearray, in fact) when its own JSON decoding did not apply
    assert parse_request(body, JSON, sig).texts == ["A fine film."]


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("application/json; charset=utf-8", '{"texts": ["Très bien", "nul"]}'.encode()),
        ("Application/JSON", {"texts": ["Très bien", "nul"]}),
        ("application/json;charset=UTF-8", '{"texts": ["Très bien", "nul"]}'.encode()),
    ],
)
def test_json_content_type_parameters_and_case_are_ignored(sig, content_type, body):
    assert parse_request(body, content_type, sig).texts == ["Très bien", "nul"]


@pytest.mark.parametrize("content_type", ["text/plain; charset=utf-8", "TEXT/PLAIN", " text/plain ;charset=utf-8"])
def test_plain_content_type_parameters_and_case_are_ignored(sig, content_type):
    assert parse_request("Très bien", content_type, sig).texts == ["Très bien"]
    assert parse_request("Très bien".encode(), content_type, sig).texts == ["Très bien"]


def test_text_is_passed_through_unchanged(sig):
    text = "  <b>Caf\u00e9</b>\u2019s  "  # normalisation is sentiment/serving/text.py's job, not the parser's
    assert parse_request({"text": text}, JSON, sig).texts == [text]


# --- rejected: body ------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [JSON, PLAIN])
@pytest.mark.parametrize("body", [b"", "", bytearray()])
def test_empty_body(sig, body, content_type):
    error = rejected(body, content_type, sig)
    assert error.kind == "empty_body"
    assert "empty" in str(error)


def test_no_plain_text_body_is_empty(sig):
    assert rejected(None, PLAIN, sig).kind == "empty_body"


@pytest.mark.parametrize("content_type", [JSON, "application/json; charset=utf-8"])
def test_json_null_is_a_wrong_type_not_an_empty_body(sig, content_type):
    # TorchServe decodes an application/json body `null` to None before the handler sees it
    error = rejected(None, content_type, sig)
    assert error.kind == "wrong_type"
    assert str(error) == 'JSON body must be an object with "text" or "texts", got null'
    assert rejected(b"null", content_type, sig).kind == "wrong_type"  # the same body, undecoded


def test_invalid_json_bytes(sig):
    error = rejected(b'{"text": "unterminated', JSON, sig)
    assert error.kind == "invalid_json"
    assert "not valid JSON" in str(error)


@pytest.mark.parametrize("content_type", [JSON, "application/json; charset=utf-8"])
@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 100_000 + b"]" * 100_000])
def test_deeply_nested_json_is_invalid_json_not_a_crash(sig, body, content_type):
    """Regression: json.loads raised RecursionError, which escaped parse_request as a non-BadRequest."""
    error = rejected(body, content_type, sig)
    assert error.kind == "invalid_json"
    assert "not valid JSON" in str(error) and "nested too deeply" in str(error)
    assert parse_request(b'{"text": "still fine"}', JSON, sig).texts == ["still fine"]  # the parser recovers


@pytest.mark.parametrize("content_type", [JSON, PLAIN, "application/json; charset=utf-8"])
def test_invalid_utf8_bytes(sig, content_type):
    error = rejected(b'{"text": "caf\xe9"}', content_type, sig)  # latin-1 é
    assert error.kind == "invalid_utf8"
    assert "UTF-8" in str(error) and "byte 13" in str(error)


@pytest.mark.parametrize(
    "body, type_name",
    [
        (["a fine film"], "list"),  # TorchServe already parsed the JSON array
        (3, "int"),
        (2.5, "float"),
        ("a fine film", "str"),  # a JSON string body
        (b'["a fine film"]', "list"),
        (b"42", "int"),
        (b"null", "null"),
    ],
)
def test_json_body_that_is_not_an_object(sig, body, type_name):
    error = rejected(body, JSON, sig)
    assert error.kind == "wrong_type"
    assert "object" in str(error) and f"got {type_name}" in str(error)


@pytest.mark.parametrize("body", [{}, {"review": "a fine film"}, {"Text": "a fine film"}])
def test_missing_text(sig, body):
    error = rejected(body, JSON, sig)
    assert error.kind == "missing_text"
    assert '"text"' in str(error) and '"texts"' in str(error)


def test_both_text_and_texts(sig):
    error = rejected({"text": "good", "texts": ["bad"]}, JSON, sig)
    assert error.kind == "missing_text"
    assert "exactly one" in str(error)


# --- rejected: text ------------------------------------------------------------------------------

@pytest.mark.parametrize("value, type_name", [(5, "int"), (None, "NoneType"), (["good"], "list"), ({"a": 1}, "dict"), (True, "bool")])
def test_non_string_text(sig, value, type_name):
    error = rejected({"text": value}, JSON, sig)
    assert error.kind == "wrong_type"
    assert str(error) == f"text must be a string, got {type_name}"


@pytest.mark.parametrize("value", [" ", "\n\t  ", "\u00a0\u2003"])
def test_whitespace_only_text(sig, value):
    error = rejected({"text": value}, JSON, sig)
    assert error.kind == "empty_text"
    assert str(error) == "text is empty or whitespace only"


def test_empty_string_text(sig):
    error = rejected({"text": ""}, JSON, sig)
    assert error.kind == "empty_text"


def test_whitespace_only_plain_body_names_the_body(sig):
    error = rejected("   \n", PLAIN, sig)
    assert error.kind == "empty_text"
    assert str(error).startswith("body ")


def test_null_byte(sig):
    error = rejected({"text": "good\x00film"}, JSON, sig)
    assert error.kind == "null_byte"
    assert "null byte" in str(error) and str(error).startswith("text ")
    assert rejected("good\x00", PLAIN, sig).kind == "null_byte"


def test_text_over_max_chars(sig):
    error = rejected({"text": "x" * (sig.max_chars + 1)}, JSON, sig)
    assert error.kind == "text_too_long"
    assert f"{sig.max_chars + 1} characters" in str(error) and f"limit is {sig.max_chars}" in str(error)


def test_plain_body_over_max_chars(sig):
    error = rejected("y" * (sig.max_chars + 5), PLAIN, sig)
    assert error.kind == "text_too_long"
    assert str(error).startswith("body ")


# --- rejected: texts -----------------------------------------------------------------------------

def test_texts_list_too_long(sig):
    error = rejected({"texts": ["good"] * (sig.max_texts + 1)}, JSON, sig)
    assert error.kind == "too_many_texts"
    assert str(error) == f"texts must hold 1 to {sig.max_texts} strings, got {sig.max_texts + 1}"


def test_texts_list_empty(sig):
    error = rejected({"texts": []}, JSON, sig)
    assert error.kind == "too_many_texts"
    assert "got 0" in str(error)


@pytest.mark.parametrize("value, type_name", [("good", "str"), ({"0": "good"}, "dict"), (None, "NoneType")])
def test_texts_not_a_list(sig, value, type_name):
    error = rejected({"texts": value}, JSON, sig)
    assert error.kind == "wrong_type"
    assert str(error) == f"texts must be a list of strings, got {type_name}"


@pytest.mark.parametrize(
    "texts, kind, where",
    [
        (["good", 3], "wrong_type", "texts[1]"),
        (["good", "fine", "   "], "empty_text", "texts[2]"),
        (["x\x00"], "null_byte", "texts[0]"),
        (["ok", "z" * 41], "text_too_long", "texts[1]"),
    ],
)
def test_bad_item_in_texts_names_its_index(sig, texts, kind, where):
    error = rejected({"texts": texts}, JSON, sig)
    assert error.kind == kind
    assert str(error).startswith(where + " ")


def test_default_limits_apply_when_the_signature_does_not_override_them():
    sig = Signature(model_name="sentiment", version="1", features=Features(), metrics={}, data_md5={})
    assert len(parse_request({"texts": ["a"] * sig.max_texts}, JSON, sig).texts) == sig.max_texts
    assert rejected({"texts": ["a"] * (sig.max_texts + 1)}, JSON, sig).kind == "too_many_texts"
    assert rejected({"text": "a" * (sig.max_chars + 1)}, JSON, sig).kind == "text_too_long"


# --- rejected: content type ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "content_type, named",
    [
        (None, "'(none)'"),
        ("", "'(none)'"),
        ("application/x-www-form-urlencoded", "'application/x-www-form-urlencoded'"),
        ("application/octet-stream", "'application/octet-stream'"),
        ("multipart/form-data; boundary=xyz", "'multipart/form-data'"),
        ("text/html", "'text/html'"),
    ],
)
def test_unsupported_content_types(sig, content_type, named):
    error = rejected(b'{"text": "a fine film"}', content_type, sig)
    assert error.kind == "unsupported_content_type"
    assert named in str(error)
    assert "application/json" in str(error) and "text/plain" in str(error)  # and says what to send instead


def test_content_type_is_checked_before_the_body(sig):
    assert rejected(b"", "application/octet-stream", sig).kind == "unsupported_content_type"


# --- KServe v2 (Open Inference Protocol) requests --------------------------------------------------

def v2(data, name="text", **extra):
    return {"inputs": [{"name": name, "datatype": "BYTES", "shape": [len(data) if isinstance(data, list) else 1], "data": data}], **extra}


def test_v2_request(sig):
    parsed = parse_request(v2(["good", "bad"], id="req-1"), JSON, sig)
    assert parsed == Parsed(texts=["good", "bad"], form="v2", request_id="req-1")


def test_v2_request_as_bytes_without_id(sig):
    parsed = parse_request(json.dumps(v2(["good"])).encode(), "application/json; charset=utf-8", sig)
    assert parsed == Parsed(texts=["good"], form="v2", request_id=None)


def test_v2_non_string_id_is_not_echoed(sig):
    assert parse_request(v2(["good"], id=17), JSON, sig).request_id is None


def test_v2_other_inputs_are_ignored(sig):
    body = {"inputs": [{"name": "extra", "data": [1]}, {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["good"]}]}
    assert parse_request(body, JSON, sig).texts == ["good"]


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": []},
        {"inputs": [{"name": "review", "data": ["good"]}]},
        {"inputs": [{"name": "text", "data": ["a"]}, {"name": "text", "data": ["b"]}]},
        {"inputs": {"name": "text", "data": ["good"]}},
        {"inputs": ["good"]},
        {"inputs": None},
    ],
)
def test_v2_without_exactly_one_text_input(sig, body):
    error = rejected(body, JSON, sig)
    assert error.kind == "missing_text"
    assert 'input named "text"' in str(error)


@pytest.mark.parametrize(
    "data, kind, message_start",
    [
        ("good", "wrong_type", "inputs[text].data must be a list of strings, got str"),
        (None, "wrong_type", "inputs[text].data must be a list of strings, got NoneType"),
        ([], "too_many_texts", "inputs[text].data must hold 1 to 3 strings, got 0"),
        (["a", "b", "c", "d"], "too_many_texts", "inputs[text].data must hold 1 to 3 strings, got 4"),
        (["good", 3], "wrong_type", "inputs[text].data[1] must be a string"),
        (["   "], "empty_text", "inputs[text].data[0] is empty"),
        (["x" * 41], "text_too_long", "inputs[text].data[0] has 41 characters"),
    ],
)
def test_v2_bad_data(sig, data, kind, message_start):
    error = rejected(v2(data), JSON, sig)
    assert error.kind == kind
    assert str(error).startswith(message_start)


# --- errors and response bodies -----------------------------------------------------------------

def test_bad_request_is_a_request_error_with_status_400():
    error = BadRequest("empty_text", "text is empty")
    assert isinstance(error, RequestError)
    assert error.kind == "empty_text" and str(error) == "text is empty" and error.status == 400
    assert RequestError("inference_error", "boom").status == 500


def test_error_body_shape_matches_torchserve_errors_and_is_json(sig):
    error = rejected({"text": 3}, JSON, sig)
    body = error.body()
    assert body == {"code": 400, "type": "BadRequest", "kind": "wrong_type", "message": "text must be a string, got int"}
    assert json.loads(json.dumps(body)) == body
    assert RequestError("inference_error", "boom").body() == \
        {"code": 500, "type": "InternalServerError", "kind": "inference_error", "message": "boom"}


def test_response_body_of_a_rejected_request_is_its_error(sig):
    error = BadRequest("empty_text", "text is empty or whitespace only")
    assert response_body(Parsed(error=error), sig) == error.body()


def test_response_body_single_text(sig):
    body = response_body(Parsed(texts=["good"]).answer([0.912345678], sig), sig)
    assert body == {"label": "positive", "probability": 0.912346, "model_version": "test"}


def test_response_body_texts_list(sig):
    body = response_body(Parsed(texts=["good", "bad"], form="texts").answer([0.9, 0.1], sig), sig)
    assert body == {"predictions": [{"label": "positive", "probability": 0.9}, {"label": "negative", "probability": 0.1}],
                    "model_version": "test"}


def test_response_body_v2_echoes_the_id(sig):
    body = response_body(Parsed(texts=["good", "bad"], form="v2", request_id="req-1").answer([0.9, 0.1], sig), sig)
    assert body == {
        "id": "req-1", "model_name": "sentiment", "model_version": "test",
        "outputs": [
            {"name": "probability", "datatype": "FP32", "shape": [2], "data": [0.9, 0.1]},
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["positive", "negative"]},
        ],
    }
    assert "id" not in response_body(Parsed(texts=["good"], form="v2").answer([0.9], sig), sig)


def test_response_label_follows_the_threshold(sig):
    assert response_body(Parsed(texts=["x"]).answer([sig.threshold], sig), sig)["label"] == "positive"
    assert response_body(Parsed(texts=["x"]).answer([sig.threshold - 0.01], sig), sig)["label"] == "negative"


@pytest.mark.parametrize("form", ["text", "texts", "v2"])
def test_reported_probability_and_label_agree_at_the_threshold(sig, form):
    """Regression: the label came from the unrounded probability, so 0.4999996 was answered
    {label: negative, probability: 0.5}. Now both come from the rounded value, in every response form."""
    near = [sig.threshold - 4e-7, sig.threshold - 6e-7, sig.threshold + 4e-7]
    body = response_body(Parsed(texts=["x"] * 3, form=form).answer(near, sig), sig)
    if form == "v2":
        outputs = {o["name"]: o["data"] for o in body["outputs"]}
        pairs = list(zip(outputs["label"], outputs["probability"]))
    elif form == "texts":
        pairs = [(p["label"], p["probability"]) for p in body["predictions"]]
    else:
        pairs = [(body["label"], body["probability"])]
    assert pairs[0] == ("positive", 0.5)
    if form != "text":
        assert pairs[1:] == [("negative", 0.499999), ("positive", 0.5)]
    assert all(label == sig.label(p) for label, p in pairs)
