"""The request and response formats: bodies -> texts, predictions -> JSON, errors -> JSON.
Pure functions, no TorchServe import.

Three request forms: {"text": "..."}, {"texts": [...]}, text/plain, and the KServe v2 (Open
Inference Protocol) form {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [n], "data": [...]}]},
answered in the same protocol. TorchServe hands the handler JSON already parsed (dict/list),
text/* already decoded (str), and anything it could not decode as raw bytes.
"""

import json
from dataclasses import dataclass, field

from sentiment.serving.signature import Signature
from sentiment.serving.text import normalized_length_bound, tokenize

JSON, PLAIN_TEXT = "application/json", "text/plain"


class RequestError(Exception):
    """A request that gets an error answer; `kind` names the cause in logs and metrics."""

    status = 500
    title = "InternalServerError"

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind

    def body(self) -> dict:
        """Same shape as TorchServe's own errors ({"code", "type", "message"}), plus the kind."""
        return {"code": self.status, "type": self.title, "kind": self.kind, "message": str(self)}


class BadRequest(RequestError):
    """Invalid client input: HTTP 400."""

    status = 400
    title = "BadRequest"


class Unavailable(RequestError):
    """Not served now, fine to retry (e.g. an explanation after its batch's time budget): HTTP 503."""

    status = 503
    title = "ServiceUnavailable"


@dataclass
class Parsed:
    """One client request: its texts and the form it came in; later its answer, or its error."""

    texts: list[str] = field(default_factory=list)
    form: str = "text"  # "text", "texts" or "v2": decides the response shape
    request_id: str | None = None
    probabilities: list[float] | None = None  # as answered (see `answer`)
    labels: list[str] | None = None
    error: RequestError | None = None
    explain: bool = False  # asked through an explanations endpoint: answered by `explanation_body`
    explanations: list[dict] | None = None  # per text: explain.Explanation.as_dict()

    def answer(self, probabilities: list[float], signature: "Signature", lengths: list[int] | None = None) -> "Parsed":
        """Record the model's probabilities as answered and their labels, once: the response body and the metrics read both."""
        self.probabilities, self.labels = labelled(probabilities, signature, lengths)
        return self


def parse_request(body, content_type: str | None, signature: Signature, explain: bool = False) -> Parsed:
    """Texts of one request body; BadRequest (naming what is wrong) if it is not usable. An explanation
    request (`explain`) may hold signature.max_explain_texts texts and max_explain_chars characters of
    words in all (answer_chars): it costs more than a prediction, and its answer lists every word."""
    parsed = _parse(body, content_type, signature, signature.max_explain_texts if explain else signature.max_texts)
    if explain and (total := sum(map(answer_chars, parsed.texts))) > signature.max_explain_chars:
        raise BadRequest("explanation_too_long", f"an explanation request may hold {signature.max_explain_chars} characters of "
                                                 f"words in all, once normalised, got {total}: send fewer or shorter texts per request")
    return parsed


def answer_chars(text: str) -> int:
    """The characters of the words an explanation of `text` lists, as the model reads them: normalised
    ("…" reads as "...", three words), so more than `len(text)` where HTML entities or compatibility forms
    expand. Each word costs the answer a record and each character up to a 7-byte escape (properties);
    v2 lists at most max_length - 2 words (of word pieces) a text, and max_explain_texts (2) texts: far less."""
    return sum(map(len, tokenize(text)))


def _parse(body, content_type: str | None, signature: Signature, max_texts: int) -> Parsed:
    content_type = (content_type or "").split(";")[0].strip().lower()
    if content_type not in (JSON, PLAIN_TEXT):
        raise BadRequest(
            "unsupported_content_type",
            f"unsupported Content-Type {content_type or '(none)'!r}: send application/json "
            '{"text": "..."} or {"texts": [...]}, or text/plain with the review as the body',
        )
    if body is None and content_type == JSON:  # the JSON literal null
        raise BadRequest("wrong_type", 'JSON body must be an object with "text" or "texts", got null')
    if body in (b"", "", None):
        raise BadRequest("empty_body", "request body is empty")
    if isinstance(body, (bytes, bytearray)):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest("invalid_utf8", f"body is not valid UTF-8 (byte {e.start})") from None
        if content_type == JSON:
            try:
                body = json.loads(body)
            except ValueError as e:  # JSONDecodeError, or a number past Python's digit limit ("Exceeds the limit (4300 digits)")
                raise BadRequest("invalid_json", f"body is not valid JSON: {e}") from None
            except RecursionError:
                raise BadRequest("invalid_json", "body is not valid JSON: nested too deeply") from None
    if content_type == PLAIN_TEXT:
        return Parsed([check_text(body, "body", signature)])
    if not isinstance(body, dict):
        got = "null" if body is None else type(body).__name__
        raise BadRequest("wrong_type", f'JSON body must be an object with "text" or "texts", got {got}')
    if "inputs" in body:
        return parse_v2(body, signature, max_texts)
    if ("text" in body) == ("texts" in body):
        raise BadRequest("missing_text", 'JSON body must have exactly one of "text" (a string) or "texts" (a list of strings)')
    if "text" in body:
        return Parsed([check_text(body["text"], "text", signature)])
    return Parsed(check_texts(body["texts"], "texts", signature, max_texts), form="texts")


def parse_v2(body: dict, signature: Signature, max_texts: int) -> Parsed:
    """KServe v2: the texts are the `data` of the input named "text" (datatype BYTES, shape [n])."""
    inputs = body["inputs"]
    named = [i for i in inputs if isinstance(i, dict) and i.get("name") == "text"] if isinstance(inputs, list) else []
    if len(named) != 1:
        raise BadRequest("missing_text", 'KServe v2 request must have exactly one input named "text" (datatype BYTES)')
    request_id = body.get("id")
    return Parsed(check_texts(named[0].get("data"), "inputs[text].data", signature, max_texts), form="v2",
                  request_id=check_unicode(request_id, "id") if isinstance(request_id, str) else None)


def check_texts(texts, where: str, signature: Signature, max_texts: int) -> list[str]:
    if not isinstance(texts, list):
        raise BadRequest("wrong_type", f"{where} must be a list of strings, got {type(texts).__name__}")
    if not 1 <= len(texts) <= max_texts:
        raise BadRequest("too_many_texts", f"{where} must hold 1 to {max_texts} strings, got {len(texts)}")
    return [check_text(t, f"{where}[{i}]", signature) for i, t in enumerate(texts)]


def check_text(text, where: str, signature: Signature) -> str:
    if not isinstance(text, str):
        raise BadRequest("wrong_type", f"{where} must be a string, got {type(text).__name__}")
    if "\x00" in text:
        raise BadRequest("null_byte", f"{where} contains a null byte")
    check_unicode(text, where)
    if not text.strip():
        raise BadRequest("empty_text", f"{where} is empty or whitespace only")
    if len(text) > signature.max_chars:
        raise BadRequest("text_too_long", f"{where} has {len(text)} characters, the limit is {signature.max_chars}")
    # The limit holds for the text the model reads: HTML entities and compatibility forms expand.
    if (expanded := normalized_length_bound(text)) > signature.max_chars:
        raise BadRequest("text_too_long", f"{where} has up to {expanded} characters once normalised (HTML entities, "
                                          f"Unicode NFKC), the limit is {signature.max_chars}")
    return text


def check_unicode(text: str, where: str) -> str:
    """JSON's "\\ud800" escape decodes to a lone surrogate: not Unicode text, so no tokenizer, UTF-8 writer
    or JSON answer can take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadRequest("lone_surrogate", f"{where} contains a lone UTF-16 surrogate (U+{ord(text[error.start]):04X}) "
                                           f"at character {error.start}: escape a character outside the BMP as a pair") from None
    return text


def answer_all(requests: list[Parsed], probabilities: list[float], signature: Signature, lengths: list[int] | None = None) -> None:
    """Give each request its share of one forward pass over all their texts, concatenated in order (and of
    their `lengths`, encoder.lengths, where the calibration reads them)."""
    cursor = 0
    for request in requests:
        end = cursor + len(request.texts)
        request.answer(probabilities[cursor:end], signature, None if lengths is None else lengths[cursor:end])
        cursor = end


def labelled(probabilities: list[float], signature: Signature, lengths: list[int] | None = None) -> tuple[list[float], list[str]]:
    """The core's probabilities as answered, calibrated (Signature.calibrate, which may read each text's
    `lengths`: encoder.lengths) and rounded to 6 decimals, and their labels, taken from the rounded value
    so that an answer never disagrees with itself. The one place that calibrates and labels: the handler,
    its metrics, the drift reference and batch scoring all go through it, so a text gets the same answer
    online and offline."""
    lengths = [None] * len(probabilities) if lengths is None else lengths
    if len(lengths) != len(probabilities):
        raise ValueError(f"{len(probabilities)} probabilities but {len(lengths)} lengths")
    rounded = [round(signature.calibrate(p, n), 6) for p, n in zip(probabilities, lengths)]
    return rounded, [signature.label(p) for p in rounded]


def response_body(request: Parsed, signature: Signature) -> dict:
    """The answer to one request, in the form it was asked in."""
    if request.error is not None:
        return request.error.body()
    probabilities, labels = request.probabilities, request.labels
    if request.form == "v2":
        body = {"model_name": signature.model_name, "model_version": signature.version, "outputs": [
            {"name": "probability", "datatype": "FP32", "shape": [len(probabilities)], "data": probabilities},
            {"name": "label", "datatype": "BYTES", "shape": [len(labels)], "data": labels},
        ]}
        return {"id": request.request_id, **body} if request.request_id else body
    predictions = [{"label": label, "probability": p} for label, p in zip(labels, probabilities)]
    version = {"model_version": signature.version}
    return {"predictions": predictions, **version} if request.form == "texts" else {**predictions[0], **version}


def encoded(body: dict | list) -> bytes:
    """An answer as compact UTF-8 JSON. Handed bytes, TorchServe sends them as they are; handed a dict,
    it writes json.dumps(indent=2) with ASCII escapes, up to 3x larger (max_response_size counts them)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def explanation_body(request: Parsed, signature: Signature) -> dict | list:
    """The answer to one explanation request: per text, its prediction and which words made it
    (explain.Explanation.as_dict()); a list for {"texts": [...]}, in order. KServe v2 requests get the
    prediction's outputs plus "explanation", one JSON document per text (BYTES data are strings)."""
    if request.error is not None:
        return request.error.body()
    if request.form == "v2":
        body = response_body(request, signature)
        data = [json.dumps(e, ensure_ascii=False) for e in request.explanations]
        body["outputs"].append({"name": "explanation", "datatype": "BYTES", "shape": [len(data)], "data": data})
        return body
    answers = [{"label": label, "probability": p, "model_version": signature.version, **explanation}
               for label, p, explanation in zip(request.labels, request.probabilities, request.explanations)]
    return answers if request.form == "texts" else answers[0]
