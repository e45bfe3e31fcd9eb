"""Model versions on one TorchServe: register v2 beside v1 through the management API, route to a
version, promote v2 (set-default), roll back to v1, unregister v2, all under continuous client
traffic that must see no failed request."""

import threading
import time
from collections import Counter

import pytest
import requests

import quick_v2
from sentiment.ops.torchserve import LocalTorchServe

V2_MAR = "sentiment_v2.mar"
REVIEW = {"text": "A gorgeous, moving film with a wonderful cast."}


@pytest.fixture(scope="module")
def store():
    """v1's archive and a quickly fine-tuned transformer v2 (tests/quick_v2.py: the real pipeline cut
    to a few steps, so that the suite never waits for `make train VERSION=2`)."""
    return quick_v2.build()


@pytest.fixture(scope="module")
def ts(store):
    """A TorchServe of its own with only v1 loaded (this module registers and removes versions)."""
    server = LocalTorchServe(store, models="sentiment.mar", config={"enable_model_api": "true"})  # make serve MODEL_API=on
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Traffic:
    """Background clients, each sending one request after another to one path, recording every answer."""

    def __init__(self, ts, paths: list[str]):
        self.ts, self.paths = ts, paths
        self.answers: dict[str, list[tuple[int, str | None]]] = {path: [] for path in paths}
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(path,), daemon=True) for path in paths]

    def run(self, path: str) -> None:
        with requests.Session() as session:
            while not self.stopping.is_set():
                try:
                    response = session.post(self.ts.inference + path, json=REVIEW, timeout=30)
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    self.answers[path].append((response.status_code, version))
                    if response.status_code != 200:
                        self.errors.append(f"{path}: {response.status_code} {response.text[:200]}")
                except requests.RequestException as error:
                    self.errors.append(f"{path}: {error!r}")

    def versions(self, path: str, since: int = 0) -> Counter:
        return Counter(version for _, version in self.answers[path][since:])

    def wait_for(self, path: str, version: str, count: int = 20, timeout: float = 30) -> None:
        """Until `count` answers from `version` arrived on `path` after this call."""
        since = len(self.answers[path])
        deadline = time.monotonic() + timeout
        while self.versions(path, since)[version] < count:
            assert time.monotonic() < deadline, f"{path}: {self.versions(path, since)} after {timeout} s"
            assert not self.errors, self.errors[:5]
            time.sleep(0.05)

    def __enter__(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)


def predict_version(ts, path: str) -> str:
    response = requests.post(ts.inference + path, json=REVIEW, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def test_register_route_promote_rollback_unregister_without_a_failed_request(ts):
    with Traffic(ts, ["/predictions/sentiment", "/predictions/sentiment/1"]) as traffic:
        traffic.wait_for("/predictions/sentiment", "1")

        # Register v2 beside v1: v1 stays the default. (Every admin call raises if TorchServe refuses.)
        ts.admin.register(V2_MAR)
        versions = {m["modelVersion"]: m for m in ts.admin.describe(version="all")}
        assert set(versions) == {"1", "2"}
        assert any(w["status"] == "READY" for w in versions["2"]["workers"])

        # Route to a version explicitly.
        assert predict_version(ts, "/predictions/sentiment/2") == "2"
        assert predict_version(ts, "/predictions/sentiment/1") == "1"
        assert predict_version(ts, "/predictions/sentiment") == "1"
        # ... and they are two models (the NBSVM and the transformer) under one name: their probabilities differ.
        texts = {"texts": ["a slow, sad and beautiful film", "not bad at all", "an utter bore"]}
        one, two = (requests.post(ts.inference + f"/predictions/sentiment/{v}", json=texts, timeout=30).json() for v in "12")
        assert [p["probability"] for p in one["predictions"]] != [p["probability"] for p in two["predictions"]]

        # Promote v2: unversioned requests go to v2 from now on.
        ts.admin.set_default("2")
        assert predict_version(ts, "/predictions/sentiment") == "2"
        traffic.wait_for("/predictions/sentiment", "2")
        assert predict_version(ts, "/predictions/sentiment/1") == "1"  # v1 still answers when asked for

        # Roll back to v1.
        ts.admin.set_default("1")
        assert predict_version(ts, "/predictions/sentiment") == "1"
        traffic.wait_for("/predictions/sentiment", "1")

        # Retire v2; v1 keeps serving.
        ts.admin.unregister(version="2")
        assert [m["modelVersion"] for m in ts.admin.describe(version="all")] == ["1"]
        assert requests.post(ts.inference + "/predictions/sentiment/2", json=REVIEW, timeout=30).status_code == 404
        traffic.wait_for("/predictions/sentiment", "1")
        traffic.wait_for("/predictions/sentiment/1", "1")

    assert not traffic.errors, traffic.errors[:5]
    unversioned, pinned = traffic.versions("/predictions/sentiment"), traffic.versions("/predictions/sentiment/1")
    assert set(unversioned) == {"1", "2"} and unversioned["2"] >= 20
    assert set(pinned) == {"1"}
    assert all(status == 200 for answers in traffic.answers.values() for status, _ in answers)
