"""A quickly fine-tuned v2 (the transformer) for the tests: the real pipeline (`make archive VERSION=2`:
verified pretrained weights, sentiment/training/transformer.py, export with its parity checks, archive) cut to a
few optimizer steps, in a build folder of its own so that it never stands in for the real
build/v2. Its accuracy is far below the real v2's; what the tests check does not depend on it."""

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "test-v2"
EXPORT = BUILD / "export"
STORE = BUILD / "model_store"  # sentiment.mar (v1, copied) and sentiment_v2.mar (this build)
TRAIN_ARGS = "--max-steps 40 --eval-size 200 --imdb-size 100"
EXPORT_ARGS = "--gate-size 200"  # the int8 gate on 200 IMDB test reviews (the real v2: 4,000)


def build() -> Path:
    """Build (or, when up to date, reuse) the quick v2 archive; returns the model store holding v1 and v2."""
    subprocess.run(["make", "-s", "archive", "VERSION=2", f"BUILD={BUILD}", f"STORE={STORE}", f"TRAIN_ARGS={TRAIN_ARGS}", f"EXPORT_ARGS={EXPORT_ARGS}"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["make", "-s", "archive"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    v1, copy = ROOT / "model_store" / "sentiment.mar", STORE / "sentiment.mar"
    if not copy.exists() or copy.read_bytes() != v1.read_bytes():
        partial = copy.with_suffix(f".{os.getpid()}.part")  # tests in parallel processes may be reading the old copy
        shutil.copyfile(v1, partial)
        os.replace(partial, copy)
    return STORE


if __name__ == "__main__":  # `make test` builds it once before the tests run in parallel
    build()
