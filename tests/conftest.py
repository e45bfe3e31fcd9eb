"""Shared fixtures: the built artifact and one real TorchServe for the integration tests.

Every server is a `LocalTorchServe` (free loopback ports, its own TMPDIR) and is stopped in the
fixture's teardown; the last check of the session is that none of their processes outlive it.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from local_server import LocalTorchServe, server_processes  # noqa: E402
from signature import Signature, load_vocab_index  # noqa: E402
from text import Encoder  # noqa: E402

EXPORT_DIR = ROOT / "build" / "v1" / "export"
MODEL_STORE = ROOT / "model_store"


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


@pytest.fixture(scope="session", autouse=True)
def no_server_left_behind():
    yield
    left = server_processes(LocalTorchServe.homes)
    assert not left, f"TorchServe processes started by the tests outlived them: {[p.pid for p in left]}"
