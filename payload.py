"""Request bodies -> texts, and the errors clients get back: pure functions, no TorchServe import.

TorchServe hands the handler JSON already parsed (dict/list), text/* already decoded (str), and
anything it could not decode as raw bytes; `parse_request` accepts all three.
"""

import json
from dataclasses import dataclass, field

from signature import Signature

JSON, PLAIN_TEXT = "application/json", "text/plain"


class BadRequest(ValueError):
    """Invalid client input: answered with HTTP 400, `kind` names it in logs and metrics."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Parsed:
    """One client request: its texts, or the reason it was rejected."""

    texts: list[str] = field(default_factory=list)
    is_list: bool = False
    error: BadRequest | None = None


def parse_request(body, content_type: str | None, signature: Signature) -> Parsed:
    """Texts of one request body; BadRequest (naming what is wrong) if it is not usable."""
    content_type = (content_type or "").split(";")[0].strip().lower()
    if content_type not in (JSON, PLAIN_TEXT):
        raise BadRequest(
            "unsupported_content_type",
            f"unsupported Content-Type {content_type or '(none)'!r}: send application/json "
            '{"text": "..."} or {"texts": [...]}, or text/plain with the review as the body',
        )
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
            except json.JSONDecodeError as e:
                raise BadRequest("invalid_json", f"body is not valid JSON: {e}") from None
    if content_type == PLAIN_TEXT:
        return Parsed([check_text(body, "body", signature)])
    if not isinstance(body, dict):
        raise BadRequest("wrong_type", f'JSON body must be an object with "text" or "texts", got {type(body).__name__}')
    if ("text" in body) == ("texts" in body):
        raise BadRequest("missing_text", 'JSON body must have exactly one of "text" (a string) or "texts" (a list of strings)')
    if "text" in body:
        return Parsed([check_text(body["text"], "text", signature)])
    texts = body["texts"]
    if not isinstance(texts, list):
        raise BadRequest("wrong_type", f'"texts" must be a list of strings, got {type(texts).__name__}')
    if not 1 <= len(texts) <= signature.max_texts:
        raise BadRequest("too_many_texts", f'"texts" must hold 1 to {signature.max_texts} strings, got {len(texts)}')
    return Parsed([check_text(t, f"texts[{i}]", signature) for i, t in enumerate(texts)], is_list=True)


def check_text(text, where: str, signature: Signature) -> str:
    if not isinstance(text, str):
        raise BadRequest("wrong_type", f"{where} must be a string, got {type(text).__name__}")
    if "\x00" in text:
        raise BadRequest("null_byte", f"{where} contains a null byte")
    if not text.strip():
        raise BadRequest("empty_text", f"{where} is empty or whitespace only")
    if len(text) > signature.max_chars:
        raise BadRequest("text_too_long", f"{where} has {len(text)} characters, the limit is {signature.max_chars}")
    return text


def error_body(error: BadRequest) -> dict:
    """Same shape as TorchServe's own errors ({"code", "type", "message"}), plus the kind."""
    return {"code": 400, "type": "BadRequest", "kind": error.kind, "message": str(error)}
