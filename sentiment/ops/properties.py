"""TorchServe's config.properties: reading one as TorchServe (java.util.Properties) reads it, and the
request-size limit the serving contract implies. Used by sentiment/ops/torchserve.py, sentiment/ops/kserve_layout.py
and the tests; no dependencies, so it runs anywhere (the layout builder, a test, a script)."""

from pathlib import Path

# A character inside a JSON string takes at most 12 bytes: a character outside the Basic Multilingual
# Plane escaped as a UTF-16 surrogate pair, "\ud83d\ude00" (raw UTF-8 needs 4, a \uXXXX escape 6).
MAX_JSON_BYTES_PER_CHAR = 12
PER_TEXT_FRAMING = 16  # quotes, comma and pretty-printing whitespace around each text
ENVELOPE = 64 * 1024  # everything else: keys, a KServe v2 input's name/datatype/shape, its id, whitespace


# An explanation answer lists each word the model read (payload.answer_chars counts their characters,
# Signature.max_explain_chars bounds them) as {"token":"…","start":10000,"end":10000,"contribution":-1.2345678901234567e-308}.
# Compact JSON (payload.encoded) takes 79 bytes a word plus up to 6 a character (a control character's
# \u0001 escape); a KServe v2 answer carries each explanation as a JSON string inside the JSON, escaped twice:
# 97 bytes a word (its quotes escaped, ", " and ": " separators) plus up to 7 a character (\\u0001).
MAX_EXPLANATION_BYTES_PER_WORD = 97
MAX_EXPLANATION_BYTES_PER_CHAR = 7
PER_ANSWER_FRAMING = 512  # label, probability, version, base, logit, method and completeness error of one text


def max_response_bytes(max_explain_texts: int, max_explain_chars: int) -> int:
    """The largest answer within the signature's limits: an explanation request of max_explain_chars
    characters of words in all (predictions are far smaller), each word at least one character. TorchServe's
    max_response_size must be at least this: a larger answer makes the frontend close the worker
    ("Message size exceed limit") and every request batched with it fails."""
    return (max_explain_chars * (MAX_EXPLANATION_BYTES_PER_WORD + MAX_EXPLANATION_BYTES_PER_CHAR)
            + max_explain_texts * PER_ANSWER_FRAMING + ENVELOPE)


def max_request_bytes(max_texts: int, max_chars: int) -> int:
    """The largest JSON body a request within the signature's limits (max_texts texts of max_chars
    characters, in any form: {"texts": [...]}, KServe v2, however escaped) needs: TorchServe's
    max_request_size must be at least this, or such a request is refused with HTTP 413."""
    return max_texts * (max_chars * MAX_JSON_BYTES_PER_CHAR + PER_TEXT_FRAMING) + ENVELOPE


def read_properties(path: Path) -> dict[str, str]:
    """The settings in a .properties file, parsed by java.util.Properties' rules (what TorchServe
    reads): `#`/`!` comments, `key=value`, `key: value` or `key value`, backslash line continuations
    and escapes. A later key overrides an earlier one, as in Java."""
    settings = {}
    for line in _logical_lines(Path(path).read_text(encoding="latin-1")):
        key, value = _split(line)
        settings[_unescape(key)] = _unescape(value)
    return settings


def _logical_lines(text: str):
    pending = ""
    for raw in text.splitlines():
        line = raw.lstrip(" \t\f")
        if not pending and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:  # an odd number of backslashes: the line continues on the next one
            pending += line[:-1]
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _split(line: str) -> tuple[str, str]:
    """Key and raw value: the key ends at the first unescaped '=', ':' or whitespace."""
    i, n = 0, len(line)
    while i < n and line[i] not in "=: \t\f":
        i += 2 if line[i] == "\\" else 1
    key, rest = line[:i], line[i:].lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "u" and i + 6 <= len(text):
                out.append(chr(int(text[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)
