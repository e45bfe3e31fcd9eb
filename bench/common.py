"""What every part of the benchmark shares: paths, the model name, the client counts, the log line,
and the one lookup of a measured point."""

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


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def at(points: list[dict], case: str, concurrency: int) -> dict | None:
    return next((p for p in points if p["case"] == case and p["concurrency"] == concurrency), None)

