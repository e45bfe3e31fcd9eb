"""Serving benchmark (`make bench`): TorchServe as shipped against honest peers, the TorchServe
grid behind the shipped configuration, and in-process ceilings.

    .venv/bin/python bench/run.py                          # from a clean tree: bench/results/, ~10 minutes
    .venv/bin/python bench/run.py --allow-dirty            # from a dirty tree: bench/results/tmp/
    .venv/bin/python bench/run.py --quick --allow-dirty    # short points, a smaller grid: a smoke test
    .venv/bin/python bench/run.py --model-version 2        # build/v2/export and model_store/sentiment_v2.mar

Every case runs at 1, 8 and 32 concurrent closed-loop clients (bench/loadgen.py in its own
process: fixed warm-up, fixed duration, every answer checked) on loopback, with real rt-polarity
reviews (bench/corpus.py). The jobs, one file each, in this order:

  ceilings       bench/inprocess.py: encoding and the TorchScript / eager / ONNX Runtime forward
                 on batches of 1 and 64 texts; a TorchServe worker's own cost by step (v1 only)
  head-to-head   bench/headtohead.py: TorchServe, its /ping, FastAPI with one and with N uvicorn
                 workers, LitServe; short, long and mix bodies; CPU per request and RSS per tree
  tuning         bench/tuning.py: the shipped TorchServe against one-setting variants (TorchServe's
                 own logging, system metrics, JVM heap, netty threads): what each per-request cost is worth
  grid           bench/grid.py: TorchServe over workers x batch size, then a batch-delay sweep
                 (skipped if the --budget would run out)
  report, plot   bench/report.py, bench/plot.py: targets, breakdown, summary.md, the PNG

Servers and their lifecycles are in bench/servers.py, one measured point in bench/measure.py, the
model version's artifact, archive and scoring in bench/model.py. Writes results.json (machine,
versions, configuration, provenance, `head_to_head`, every point), throughput_latency.png and
summary.md. Every server it starts (free ports, private TMPDIR) is stopped before it exits.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

import corpus
import grid
import headtohead
import inprocess
import model
import tuning
from archive import extract
from common import CONCURRENCY, MODEL, log
from measure import Bench
from plot import plot
from provenance import RESULTS, Provenance
from report import breakdown, recommended_defaults, summary_markdown, targets

WARMUP_S, DURATION_S = 1.0, 3.0  # per point
MAX_REQUESTS = 100_000  # per point, warm-up included: a bound far above what 4 s can reach here
BUDGET_S = 780  # seconds; the delay sweep is skipped to finish within it
QUICK = {"warmup": 0.3, "duration": 1.5, "grid_batch": (1, 8), "sweep": ()}  # --quick: a smoke test of every part


def machine_info() -> dict:
    cpu_model = ""
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu_model": cpu_model,
            "logical_cpus": psutil.cpu_count(), "physical_cpus": psutil.cpu_count(logical=False),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    packages = ("torch", "torchserve", "torch-model-archiver", "onnxruntime", "fastapi", "uvicorn", "httptools", "uvloop",
                "litserve", "pyzmq", "aiohttp")
    return {**{name: installed(name) for name in packages}, "java": java[0] if java else None}


def main() -> None:
    # A `kill` of the run (SIGTERM) unwinds like Ctrl-C, so the servers' context managers stop them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-version", default="1", help="selects build/vN/export and its archive (bench/model.py)")
    parser.add_argument("--warmup", type=float, default=WARMUP_S, help="seconds per point before measuring")
    parser.add_argument("--duration", type=float, default=DURATION_S, help="measured seconds per point")
    parser.add_argument("--max-requests", type=int, default=MAX_REQUESTS)
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds; the delay sweep is skipped to stay within it")
    parser.add_argument("--quick", action="store_true", help=f"a smoke test: {QUICK}")
    parser.add_argument("--allow-dirty", action="store_true", help="run from a dirty tree; results go to bench/results/tmp/")
    args = parser.parse_args()
    run = Provenance(args.allow_dirty)  # refuses a dirty tree now, not after the run
    if args.quick:
        args.warmup, args.duration = QUICK["warmup"], QUICK["duration"]
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))  # bodies, a private copy of the model; removed at the end
    try:
        results = measure(args, scratch, started, run)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = run.target(RESULTS / results_name(args.model_version, "results.json"))
    png, md = out.with_name(results_name(args.model_version, "throughput_latency.png")), out.with_name(results_name(args.model_version, "summary.md"))
    plot(results, png)
    summary = summary_markdown(results)
    md.write_text(summary)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(summary)
    log(f"wrote {out}, {png.name}, {md.name} in {results['run_seconds']:.0f} s")


def results_name(version, name: str) -> str:
    """v1's files keep their names (results.json, ...); another version's get its number (results_v2.json, ...)."""
    return name if str(version) == "1" else name.replace(".", f"_v{version}.", 1)


def measure(args, scratch: Path, started: float, run: Provenance) -> dict:
    """Every job in turn; the results. What was measured is written even if a job fails."""
    version = str(args.model_version)
    # Private copies, so that a concurrent `make archive` cannot change the model mid-run.
    mar, store, artifact = model.archive(version), scratch / "model_store", scratch / "export"
    store.mkdir()
    shutil.copyfile(mar, store / f"{MODEL}.mar")
    shutil.copytree(model.artifact(version), artifact)
    shipped = model.shipped_config(store / f"{MODEL}.mar")
    threads = model.torch_threads(shipped)
    signature = json.loads((artifact / "signature.json").read_text())
    bodies, described = {}, {}
    for kind, (texts, stats) in {"short": corpus.short(), "long": corpus.long(), "mix": corpus.mix(signature["max_chars"])}.items():
        bodies[kind], described[kind] = scratch / f"{kind}.json", stats
        bodies[kind].write_text(json.dumps(corpus.json_bodies(texts)))
    quick = args.quick
    grid_batch, sweep = (QUICK["grid_batch"], QUICK["sweep"]) if quick else (grid.GRID_BATCH, grid.DELAY_SWEEP_MS)
    results = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(), "versions": versions(),
        "config": {"model_version": version, "concurrency": CONCURRENCY, "warmup_s": args.warmup, "duration_s": args.duration,
                   "max_requests_per_point": args.max_requests, "quick": quick,
                   "artifact": str(model.artifact(version)), "archive": str(mar),
                   "archive_sha256": hashlib.sha256(mar.read_bytes()).hexdigest(), "shipped_model_config": shipped,
                   "torch_threads_per_process": threads,
                   "model": {k: signature.get(k) for k in ("model_name", "version", "architecture", "features", "max_chars", "max_texts")},
                   "grid": {"workers": grid.GRID_WORKERS, "batch_size": grid_batch, "max_batch_delay_ms": grid.GRID_DELAY_MS,
                            "delay_sweep_ms": sweep},
                   "head_to_head_warmup_s": headtohead.WARM_S,
                   "loadgen": "bench/loadgen.py: asyncio + aiohttp, closed loop, keep-alive, every answer's shape checked, "
                              "one process on the same cores as the servers",
                   "peers": "bench/fastapi_app.py and bench/litserve_app.py: sentiment/serving/payload.py bodies, batch_predict.load_core scoring "
                            "(which imports pandas and pyarrow: in each peer process's RSS)",
                   "bodies": described},
    }
    log(f"model v{version}: {mar.name}, shipped {shipped}; load average {results['machine']['load_average_at_start']}")
    bench = Bench(args, bodies, scratch, started)
    results["points"] = bench.points
    try:
        if version in model.INPROCESS_VERSIONS:
            log("in-process ceilings and worker profile")
            model_dir = extract(store / f"{MODEL}.mar", scratch / "archive")
            profiled = sorted({*grid_batch, shipped.get("batchSize", 1)})
            measured = inprocess.measure(model_dir, bodies["mix"], artifact / "model.onnx", model.artifact(version).parent,
                                         profiled, 0.6 if quick else 1.0)
            results["ceilings"], results["worker_profile"] = measured["ceilings"], measured["worker_profile"]
            log(f"  parity: {results['ceilings']['parity']}")
        log("in-process scoring function by batch size")
        results["scoring_ceiling"] = model.scoring_ceiling(artifact, {"short": corpus.short()[0], "long": corpus.long()[0]},
                                                           seconds=0.5 if quick else 1.5)
        sample = corpus.json_bodies(corpus.mix(signature["max_chars"], n=20, seed=1)[0])
        results["head_to_head"] = headtohead.run(bench, results, version, store, artifact, shipped, threads, sample)
        log("TorchServe's own per-request costs: the shipped server against one-setting variants")
        results["tuning"] = tuning.run(bench, store)
        grid.run(bench, results, store, grid_batch, sweep)
    finally:
        results["run_seconds"] = round(time.monotonic() - started, 1)
        results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results["provenance"] = run.record()
        out = run.target(RESULTS / results_name(version, "results.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")  # whatever was measured, even on failure

    results["targets"] = targets(results)
    results["breakdown"] = breakdown(bench.points, results.get("worker_profile"))
    results["recommended_defaults"] = recommended_defaults(results)
    results["run_seconds"] = round(time.monotonic() - started, 1)
    results["provenance"] = run.record()
    return results


if __name__ == "__main__":
    main()
