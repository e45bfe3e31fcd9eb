"""Serving benchmark (`make bench`): naive FastAPI baseline vs TorchServe (workers x batch size grid), with ceilings.

    .venv/bin/python bench/run.py                  # from a clean tree: bench/results/
    .venv/bin/python bench/run.py --allow-dirty    # from a dirty tree: bench/results/tmp/
    .venv/bin/python bench/run.py --quick --allow-dirty    # short points: a smoke test

Measures, in one run, on loopback, each case at 1, 8 and 32 concurrent closed-loop clients
(bench/loadgen.py in its own process: fixed warm-up, fixed duration, bounded request count), with
real rt-polarity review texts (bench/corpus.py). The jobs, one file each:

  ceilings       bench/inprocess.py: text.py encoding and the TorchScript / eager / ONNX Runtime
                 forward on batches of 1 and 64 texts; a TorchServe worker's own cost by step
  grid           bench/grid.py: the naive app, TorchServe's /ping, the shipped configuration, and
                 TorchServe over workers x batch size x batch delay
  head-to-head   bench/headtohead.py: the target comparison in interleaved rounds
  report, plot   bench/report.py, bench/plot.py: targets, breakdown, summary.md, the PNG

Servers and their lifecycles are in bench/servers.py, one measured point in bench/measure.py.
Writes results.json (machine, versions, configuration, provenance, every number),
throughput_latency.png and summary.md. Every server it starts (free ports, private TMPDIR and
TEMP) is stopped before it exits.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

import corpus
import inprocess
from archive import extract
from common import CONCURRENCY, MODEL, ROOT, log
from grid import DELAY_SWEEP_MS, GRID_BATCH, GRID_DELAY_MS, GRID_WORKERS, run_naive, run_torchserve
from headtohead import H2H_ROUNDS, VARIANTS, h2h_medians
from measure import Bench
from plot import plot
from provenance import RESULTS, Provenance
from report import breakdown, recommended_defaults, summary_markdown, targets
from servers import PREWARM_REQUESTS

BUILD = ROOT / "build" / "v1"
EXPORT = BUILD / "export"
SHIPPED_MAR = ROOT / "model_store" / f"{MODEL}.mar"
WARMUP_S, DURATION_S = 1.0, 3.0  # per point
MAX_REQUESTS = 100_000  # per point, warm-up included: a bound far above what 4 s can reach here
BUDGET_S = 540  # seconds; the optional parts (delay sweep, frontend variants) are skipped to finish within it


def machine_info() -> dict:
    cpu_model = ""
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "logical_cpus": psutil.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }


def versions() -> dict:
    import aiohttp
    import fastapi
    import onnxruntime
    import torch
    import uvicorn

    from importlib.metadata import version
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    return {
        "torch": torch.__version__, "torchserve": version("torchserve"), "torch_model_archiver": version("torch-model-archiver"),
        "onnxruntime": onnxruntime.__version__, "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
        "aiohttp": aiohttp.__version__, "java": java[0] if java else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds per point before measuring")
    parser.add_argument("--duration", type=float, default=DURATION_S, help="measured seconds per point")
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    parser.add_argument("--mar", type=Path, default=SHIPPED_MAR, help="archive to serve (copied to a private model store)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds; optional parts are skipped to stay within it")
    parser.add_argument("--skip-variants", action="store_true", help="no frontend variants (VARIANTS) in the head-to-head")
    parser.add_argument("--quick", action="store_true", help="0.5 s warm-up, 2 s points, no frontend variants: a smoke test")
    parser.add_argument("--allow-dirty", action="store_true", help="run from a dirty tree; results go to bench/results/tmp/")
    args = parser.parse_args()
    run = Provenance(args.allow_dirty)  # refuses a dirty tree now, not after the run
    if args.quick:
        args.warmup, args.duration, args.skip_variants = 0.5, 2.0, True
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))  # request bodies, a private copy of the archive; removed at the end
    try:
        results = measure(args, scratch, started, run)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = run.target(RESULTS / "results.json")
    plot(results, out.with_name("throughput_latency.png"))
    summary = summary_markdown(results)
    out.with_name("summary.md").write_text(summary)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(summary)
    log(f"wrote {out}, throughput_latency.png, summary.md in {results['run_seconds']:.0f} s")


def measure(args, scratch: Path, started: float, run: Provenance) -> dict:
    """Every job in turn; the results. What was measured is written even if a job fails."""
    store = scratch / "model_store"
    store.mkdir(parents=True)
    shutil.copyfile(args.mar, store / f"{MODEL}.mar")  # a concurrent `make archive` cannot change it mid-run
    model_dir = extract(store / f"{MODEL}.mar", scratch / "archive")  # the naive app and in-process parts run this snapshot
    signature = json.loads((model_dir / "signature.json").read_text())
    texts, body_stats = corpus.mix(signature["max_chars"])
    bodies = corpus.json_bodies(texts)
    bodies_file = scratch / "bodies.json"
    bodies_file.write_text(json.dumps(bodies))
    results = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(), "versions": versions(),
        "config": {"concurrency": CONCURRENCY, "warmup_s": args.warmup, "duration_s": args.duration,
                   "max_requests_per_point": args.max_requests,
                   "grid": {"workers": GRID_WORKERS, "batch_size": GRID_BATCH, "max_batch_delay_ms": GRID_DELAY_MS},
                   "delay_sweep_ms": DELAY_SWEEP_MS, "head_to_head_rounds": H2H_ROUNDS,
                   "frontend_variants": {} if args.skip_variants else VARIANTS, "prewarm_requests": PREWARM_REQUESTS,
                   "archive": str(args.mar), "archive_sha256": hashlib.sha256(args.mar.read_bytes()).hexdigest(),
                   "model": {k: signature.get(k) for k in ("model_name", "version", "ngram", "features", "max_chars", "max_texts")},
                   "loadgen": "bench/loadgen.py: asyncio + aiohttp, closed loop, keep-alive, one process on the same cores as the servers",
                   "torchserve": "LocalTorchServe with config.properties, private ports/TMPDIR/TEMP; re-registered per grid point",
                   "naive": "bench/naive_app.py: FastAPI + uvicorn (h11), one process, the archive's TorchScript core and code",
                   "bodies": body_stats},
    }
    log(f"{len(bodies)} request bodies: {body_stats['chars']} chars; load average {results['machine']['load_average_at_start']}")

    log("in-process ceilings and worker profile")
    measured = inprocess.measure(model_dir, bodies_file, EXPORT / "model.onnx", BUILD, GRID_BATCH, 0.6 if args.quick else 1.0)
    results["ceilings"], results["worker_profile"] = measured["ceilings"], measured["worker_profile"]
    for b, e in results["ceilings"]["batches"].items():
        log(f"  batch {b}: encode {e['encode']['texts_per_cpu_s']:.0f} texts per CPU-s; forward " + ", ".join(
            f"{name} {e[name]['texts_per_cpu_s']:.0f}" for name in ("torchscript", "eager", "onnxruntime", "torchscript_2_threads") if name in e))
    log(f"  parity: {results['ceilings']['parity']}")

    bench = Bench(args, bodies_file, scratch, started)
    results["points"] = bench.points
    sample = bodies[:20]
    try:
        run_naive(bench, results, sample, model_dir)
        run_torchserve(bench, results, store, sample, model_dir)
    finally:
        results["run_seconds"] = round(time.monotonic() - started, 1)
        results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results["provenance"] = run.record()
        out = run.target(RESULTS / "results.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")  # whatever was measured, even on failure

    naive_p = [p["probability"] for p in results["naive_sample_predictions"]]
    ts_p = [p["probability"] for p in results["torchserve_sample_predictions"]]
    results["naive_vs_torchserve_max_abs_diff"] = max(abs(a - b) for a, b in zip(naive_p, ts_p))
    results["head_to_head"] = h2h_medians(bench.points)
    results["targets"] = targets(results)
    results["breakdown"] = breakdown(bench.points, results["worker_profile"])
    results["recommended_defaults"] = recommended_defaults(results)
    results["run_seconds"] = round(time.monotonic() - started, 1)
    results["provenance"] = run.record()
    return results


if __name__ == "__main__":
    main()
