"""What every part of the benchmark shares: paths, the model name, the client counts, the log line,
and the one lookup of a measured point."""

import math
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # after bench/, so bench's own modules win

PY = sys.executable
MODEL = "sentiment"
CONCURRENCY = (1, 8, 32)  # concurrent closed-loop clients of every case
# Past capacity, the longest a request should wait in TorchServe's queue for a worker: each model-config's
# jobQueueSize is the queue this wait allows at the version's measured capacity (`job_queue_size`), so refusals
# start only past capacity and an accepted request is answered within about this plus one batch (the overload
# target: answered or refused within 2 s). A cheaper core has a higher capacity, hence a longer queue.
QUEUE_WAIT_S = 1.0


def job_queue_size(capacity_rps: float) -> int:
    """model-config's jobQueueSize for a version that answers `capacity_rps` requests a second."""
    return max(1, math.floor(capacity_rps * QUEUE_WAIT_S))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def at(points: list[dict], case: str, concurrency: int) -> dict | None:
    return next((p for p in points if p["case"] == case and p["concurrency"] == concurrency), None)

