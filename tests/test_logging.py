"""TorchServe runs with the repository's log4j2.xml (`make serve`, LocalTorchServe): the frontend at
INFO, the workers' own log, an audit trail of the management calls that change the server and no
other access log, no metric log files, and a malformed body costs the worker's log three lines
instead of TorchServe's full traceback. A config log4j2 cannot parse is not an error to TorchServe:
it falls back to logging nothing at all, which only a test notices."""

import re
import time

import requests

PREDICT = "/predictions/sentiment"


def wait_for(server, name: str, needle: str, count: int = 1, timeout: float = 10, since: int = 0) -> str:
    """The log `name` once it holds `needle` `count` times after its first `since` characters (the frontend writes
    the workers' lines asynchronously; the server is shared, so earlier tests' lines do not count)."""
    deadline = time.monotonic() + timeout
    while server.log(name)[since:].count(needle) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return server.log(name)


def test_server_logs_as_log4j2_xml_says(server):
    assert requests.post(server.inference + PREDICT, json={"text": ""}, timeout=10).status_code == 400
    logs = server.home / "logs"
    assert "answered 400 (empty_text)" in wait_for(server, "model_log.log", "answered 400 (empty_text)")  # the handler's own line
    ts_log = server.log()
    assert "Model server started" in ts_log or "Torchserve version" in ts_log, ts_log[:500]
    assert "[DEBUG]" not in ts_log
    assert not any((logs / name).exists() for name in ("access_log.log", "ts_metrics.log", "model_metrics.log")), sorted(p.name for p in logs.iterdir())


def test_management_calls_that_change_the_server_leave_an_audit_line(server):
    """Who (address), what (method, path, query), when, and TorchServe's answer, for each scale and
    set-default, refused ones too; describe calls (polled by clients) and inference calls leave none.
    The calls keep the server as it was: its worker count and default version again."""
    workers = len(server.admin.workers())
    before = server.log("management_access.log")
    server.admin.scale(workers)
    server.admin.set_default("1")
    assert server.admin.request("PUT", "/models/no_such_model", {"min_worker": 0}).status_code == 404
    server.admin.describe()
    requests.post(server.inference + PREDICT, json={"text": "fine"}, timeout=10)
    log = wait_for(server, "management_access.log", "no_such_model")
    lines = log[len(before):].splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3} /127\.0\.0\.1:\d+ "
    expected = [rf'"PUT /models/sentiment\?min_worker={workers}&max_worker={workers}&synchronous=true HTTP/1\.1" 200 \d+',
                r'"PUT /models/sentiment/1/set-default HTTP/1\.1" 200 \d+',
                r'"PUT /models/no_such_model\?min_worker=0 HTTP/1\.1" 404 \d+']
    assert len(lines) == len(expected) and all(re.fullmatch(stamp + pattern, line) for pattern, line in zip(expected, lines)), lines


def test_a_malformed_body_costs_three_log_lines_not_a_traceback(server):
    """TorchServe's worker logs a warning with the decoder's whole traceback (12 lines) for every body
    that is not JSON, before the handler answers it 400: a flood of bad requests was a flood of log.
    log4j2.xml drops the frames; the warning, "Traceback" and the exception's line stay."""
    bodies = [b'{"text": ', b"{'text': 1}", b"\xff\xfe not utf-8"] * 4
    before = len(server.log("model_log.log"))
    for body in bodies:
        answer = requests.post(server.inference + PREDICT, data=body, headers={"Content-Type": "application/json"}, timeout=10)
        assert answer.status_code == 400 and answer.json()["kind"] in ("invalid_json", "invalid_utf8"), answer.text
    new = wait_for(server, "model_log.log", "answered 400 (invalid_", count=len(bodies), since=before)[before:]
    messages = [line.split(" MODEL_LOG - ", 1)[-1] for line in new.splitlines()]
    assert sum("answered 400 (invalid_" in m for m in messages) == len(bodies), messages
    warnings = [i for i, m in enumerate(messages) if m == "Failed json decoding of input data. Forwarding encoded payload"]
    assert len(warnings) == len(bodies), messages
    for i in warnings:
        assert messages[i + 1] == "Traceback (most recent call last):", messages[i:i + 4]
        assert re.match(r"(json\.decoder\.JSONDecodeError|UnicodeDecodeError): ", messages[i + 2]), messages[i:i + 4]
    assert not [m for m in messages if m.startswith(" ")], "traceback frames were logged"
