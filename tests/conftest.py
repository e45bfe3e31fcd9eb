"""Shared fixtures: the built artifact and one real TorchServe for the integration tests.

Every server is a `LocalTorchServe` (free loopback ports, its own TMPDIR) and is stopped in the
fixture's teardown; the last check of the session is that none of their processes outlive it.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import quick_v2  # noqa: E402
from sentiment.ops.torchserve import LocalTorchServe, server_processes  # noqa: E402
from sentiment.serving.signature import Signature, load_vocab_index  # noqa: E402
from sentiment.serving.text import Encoder  # noqa: E402

EXPORT_DIR = ROOT / "build" / "v1" / "export"
MODEL_STORE = ROOT / "model_store"
# `make test`'s xdist hands whole files to its workers in collection order (--dist loadfile --no-loadscope-reorder):
# the slowest first, so that none starts late and runs on alone (xdist's own order, most tests first, started
# test_promote.py 230 s into a 545 s run; it takes 260 s with its candidate's build). Seconds on one worker, make
# test on 2 cores, 2026-12-03: promote 260, monitoring 147, edges 147, explain 146, reliability 131, docs 110,
# readme 105, calibration 142 (before it scored each set once), training 88, limits 81, spark 76, versions 63.
SLOWEST_FIRST = ["test_promote.py", "test_monitoring.py", "test_edges.py", "test_explain.py", "test_reliability.py",
                 "test_docs.py", "test_readme.py", "test_calibration.py", "test_training.py", "test_limits.py",
                 "test_spark.py", "test_versions.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


class Scrape:
    """One /metrics answer, parsed by prometheus_client's own parser (not regexes).

    `scrape.value("SentimentPredictions", Label="positive")` sums the family's samples whose labels
    include the given ones (0 if there is none yet: a series appears at its first increment). The
    parser names a counter's samples `<family>_total` whatever TorchServe wrote; `sample` picks a
    histogram's "_count", "_sum" or "_bucket" samples."""

    def __init__(self, text: str):
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}

    @classmethod
    def of(cls, server) -> "Scrape":
        response = requests.get(server.metrics + "/metrics", timeout=10)
        assert response.status_code == 200, response.text
        return cls(response.text)

    def type(self, family: str) -> str | None:
        return self.families[family].type if family in self.families else None

    def samples(self, family: str, sample: str = "", **labels) -> list:
        if family not in self.families:
            return []
        found = self.families[family]
        name = family + (sample or ("_total" if found.type == "counter" else ""))
        return [s for s in found.samples if s.name == name and labels.items() <= s.labels.items()]

    def value(self, family: str, sample: str = "", **labels) -> float:
        return sum(s.value for s in self.samples(family, sample, **labels))


def wait_for_metrics(server, read, expected: dict, timeout: float = 20, settle: float = 0.5) -> dict:
    """Poll /metrics until every `read(scrape)[key]` has reached `expected[key]` (or `timeout`), then
    wait `settle` s so that anything more would show too, and return the last reading. TorchServe's
    frontend picks the handler's metrics up from the worker's log asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        reading = read(Scrape.of(server))
        if all(reading[key] >= count for key, count in expected.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    time.sleep(settle)
    return read(Scrape.of(server))


@pytest.fixture(scope="session")
def model_config() -> dict:
    """model-config.yaml as packed into the archive: workers, batch size, batch delay, response timeout."""
    return yaml.safe_load((ROOT / "model-config.yaml").read_text())


@pytest.fixture(scope="session")
def export_dir() -> Path:
    """build/v1/export and model_store/sentiment.mar, built by `make archive` if missing (up to date: no-op)."""
    subprocess.run(["make", "-s", "archive"], cwd=ROOT, check=True)
    return EXPORT_DIR


@pytest.fixture(scope="session")
def signature(export_dir) -> Signature:
    return Signature.load(export_dir)


@pytest.fixture(scope="session")
def vocab_index(export_dir, signature) -> dict[str, int]:
    return load_vocab_index(export_dir, signature)


@pytest.fixture(scope="session")
def encoder(vocab_index, signature) -> Encoder:
    return Encoder(vocab_index, signature.features)


@pytest.fixture(scope="session")
def server(export_dir):
    """One TorchServe with the shipped archive, shared by the integration tests that leave it as they found it."""
    with LocalTorchServe(MODEL_STORE) as ts:
        yield ts


@pytest.fixture(scope="session")
def both_versions():
    """One TorchServe with v1 (the default) and the quick v2 (tests/quick_v2.py), shared by the tests that leave it
    as they found it (default version, workers): each start is a JVM's and four workers' (10-20 s of the 2 cores)."""
    with LocalTorchServe(quick_v2.build(), models="sentiment.mar,sentiment_v2.mar") as ts:
        yield ts


@pytest.fixture(scope="session", autouse=True)
def no_server_left_behind():
    yield
    left = server_processes(LocalTorchServe.homes)
    assert not left, f"TorchServe processes started by the tests outlived them: {[p.pid for p in left]}"


@pytest.fixture(scope="session")
def scrape():
    """`scrape(server)`: the server's /metrics as a `Scrape` (prometheus_client's parser)."""
    return Scrape.of


@pytest.fixture(scope="session")
def await_metrics():
    """`await_metrics(server, read, expected)`: see `wait_for_metrics`."""
    return wait_for_metrics


@pytest.fixture(scope="session")
def parse_metrics():
    """`parse_metrics(text)`: Prometheus text (e.g. a curl's answer) as a `Scrape`."""
    return Scrape
