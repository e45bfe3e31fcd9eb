"""The shipped archive on a real TorchServe: predictions, request forms, bad input, scaling, metrics, stop."""

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sentiment.ops.torchserve import ROOT, LocalTorchServe, server_processes
from sentiment.serving.signature import MAX_CHARS

MODEL_STORE = ROOT / "model_store"

POSITIVE = [
    "A gorgeous, moving film with a wonderful cast and a smart, funny script.",
    "One of the most beautiful and touching movies of the year; a triumph.",
]
NEGATIVE = [
    "A dull, lifeless mess: boring, predictable and badly acted.",
    "The worst film of the year, a tedious waste of time with a stupid plot.",
]
JSON_HEADERS = {"Content-Type": "application/json"}


def predict(server, body=None, *, data=None, headers=JSON_HEADERS, path="/predictions/sentiment", timeout=30):
    if body is not None:
        return requests.post(server.inference + path, json=body, timeout=timeout)
    return requests.post(server.inference + path, data=data, headers=headers, timeout=timeout)


def test_positive_and_negative_reviews(server, signature):
    for text in POSITIVE + NEGATIVE:
        response = predict(server, {"text": text})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"label", "probability", "model_version"}
        assert body["model_version"] == signature.version
        expected = "positive" if text in POSITIVE else "negative"
        assert body["label"] == expected, (text, body)
        assert (body["probability"] > 0.7) if expected == "positive" else (body["probability"] < 0.3), (text, body)


def test_texts_list_answers_in_order(server):
    texts = [POSITIVE[0], NEGATIVE[0], POSITIVE[1]]
    body = predict(server, {"texts": texts}).json()
    assert [p["label"] for p in body["predictions"]] == ["positive", "negative", "positive"]
    singles = [predict(server, {"text": t}).json()["probability"] for t in texts]
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(singles, abs=1e-6)


def test_text_plain_body(server):
    response = predict(server, data=NEGATIVE[1].encode(), headers={"Content-Type": "text/plain; charset=utf-8"})
    assert response.status_code == 200, response.text
    assert response.json()["label"] == "negative"


def test_html_in_review_is_ignored(server):
    plain = predict(server, {"text": "A wonderful film. Loved it."}).json()["probability"]
    tagged = predict(server, {"text": "A <b>wonderful</b> film.<br /><br />Loved it."}).json()["probability"]
    assert tagged == pytest.approx(plain, abs=1e-6)


BAD_REQUESTS = {
    "invalid_json": dict(data=b'{"text": "unterminated', headers=JSON_HEADERS),
    "missing_text": dict(data=b'{"review": "great"}', headers=JSON_HEADERS),
    "wrong_type": dict(data=b'{"text": 42}', headers=JSON_HEADERS),
    "empty_text": dict(data=b'{"text": "   "}', headers=JSON_HEADERS),
    "empty_body": dict(data=b"", headers=JSON_HEADERS),
    "too_many_texts": dict(data=('{"texts": [%s]}' % ",".join(['"ok"'] * 65)).encode(), headers=JSON_HEADERS),
    "text_too_long": dict(data=('{"text": "%s"}' % ("long " * (MAX_CHARS // 5 + 1))).encode(), headers=JSON_HEADERS),
    "invalid_utf8": dict(data=b"\xff\xfe not utf-8", headers={"Content-Type": "text/plain"}),
    "unsupported_content_type": dict(data=b"text=great", headers={"Content-Type": "application/x-www-form-urlencoded"}),
}


@pytest.mark.parametrize("kind", sorted(BAD_REQUESTS))
def test_bad_input_is_a_400_and_spares_the_good_requests_beside_it(server, kind):
    """The bad request is sent in the middle of concurrent good ones, so they share TorchServe batches."""
    with ThreadPoolExecutor(max_workers=9) as pool:
        good = [pool.submit(predict, server, {"text": POSITIVE[i % 2]}) for i in range(4)]
        bad = pool.submit(predict, server, **BAD_REQUESTS[kind])
        good += [pool.submit(predict, server, {"text": NEGATIVE[i % 2]}) for i in range(4)]
    response = bad.result()
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 400 and body["kind"] == kind and body["message"]
    assert all(f.result().status_code == 200 for f in good)


# What TorchServe 0.12 answers a request in flight on a worker it scales down (README "Reliability").
SCALE_DOWN_ERRORS = {"Worker died.", "Worker scaled down."}


def test_scale_workers_while_serving(server):
    """Every prediction is answered while workers go 2 -> 1 -> 2 -> 1. Scaling down can fail (500
    "Worker died.") or lose (no answer) the request in flight on the removed worker; the client retries
    those, as README advises. Nothing else may fail, and at most one retry per scale-down."""
    answered, retried, failures, stop = [], [], [], threading.Event()

    def predict_with_retry():
        for _ in range(3):
            try:
                response = predict(server, {"text": POSITIVE[0]}, timeout=5)
            except requests.Timeout:
                retried.append("no answer in 5 s")
                continue
            except requests.RequestException as error:
                return failures.append(repr(error))
            if response.status_code == 500 and response.json().get("message") in SCALE_DOWN_ERRORS:
                retried.append(response.json()["message"])
                continue
            return (answered if response.status_code == 200 else failures).append(response.status_code)
        failures.append("no answer in 3 attempts")

    def keep_predicting():
        while not stop.is_set():
            predict_with_retry()

    shipped = len(server.admin.workers())
    client = threading.Thread(target=keep_predicting)
    client.start()
    try:  # each scale raises if TorchServe refuses it, and returns once exactly that many workers are READY
        server.admin.scale(1)
        assert len(server.admin.workers()) == 1
        server.admin.scale(2)
        assert len(server.admin.workers()) == 2 and server.admin.ready_workers() == 2
        time.sleep(1)
        server.admin.scale(1)
        assert len(server.admin.workers()) == 1
        answered_at_last_change = len(answered)
        deadline = time.monotonic() + 15  # a lost request holds the client for its 5 s timeout
        while len(answered) < answered_at_last_change + 10 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        client.join()
        server.admin.scale(shipped)
    scale_downs = 2 if shipped > 1 else 1
    assert not failures and len(retried) <= scale_downs, (failures, retried)
    assert len(answered) >= answered_at_last_change + 10, "requests were not answered after scaling"


def test_describe_model_shows_the_archive_settings(server, signature, model_config):
    """The server runs with model-config.yaml's values (packed into the .mar), not TorchServe's defaults."""
    (description,) = server.admin.describe()
    assert description["modelVersion"] == signature.version
    settings = ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout")
    assert set(settings) <= set(model_config), f"model-config.yaml lacks {set(settings) - set(model_config)}"
    assert {key: description[key] for key in settings} == {key: model_config[key] for key in settings}
    assert len(description["workers"]) == model_config["minWorkers"]  # left as shipped by every test using `server`


def test_metrics_are_prometheus_text(server, scrape, await_metrics):
    def requests_counted(metrics):
        return {"sentiment": metrics.value("ts_inference_requests", model_name="sentiment")}

    before = requests_counted(scrape(server))["sentiment"]
    assert predict(server, {"text": POSITIVE[0]}).status_code == 200
    after = await_metrics(server, requests_counted, {"sentiment": before + 1})
    assert after == {"sentiment": before + 1}
    assert scrape(server).type("ts_inference_requests") == "counter"


def test_start_moves_to_new_ports_when_one_is_taken():
    """free_port() cannot reserve a port: if another socket takes it before the JVM binds it, the
    frontend exits ("Address already in use") and start() retries on new ports."""
    ts = LocalTorchServe(MODEL_STORE)
    taken = socket.socket()
    taken.bind(("127.0.0.1", ts.ports["inference"]))
    taken.listen()
    try:
        ts.start()
        assert ts.ports["inference"] != taken.getsockname()[1] and ts.ready()
    finally:
        ts.stop()
        taken.close()


def test_stop_leaves_no_process():
    ts = LocalTorchServe(MODEL_STORE).start()
    pids = {ts.frontend.pid, *(w.pid for w in ts.workers())}
    assert len(pids) >= 2
    ts.stop()
    assert not pids & {p.pid for p in server_processes()}
