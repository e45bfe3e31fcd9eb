"""Which runtime, precision and session options serve each version best on these cores: measured, not assumed.

    .venv/bin/python bench/ort_grid.py          # build/v1/export and build/v2/export -> bench/results/ort_grid.json + .png

For each core (v1: TorchScript, ONNX Runtime float32; v2: TorchScript float32, ONNX Runtime float32 and int8)
and threads (1 or 2; for the int8 core also graph optimisation basic / extended / all), WORKERS
processes (as TorchServe's workers: 1 or 2) each score the benchmark's mixed reviews (bench/corpus.mix) in
batches of the model's batchSize, grouped as the handler groups them, for SECONDS; the result is texts a
second over all processes, and ms a batch at the median. What export.RUNTIMES and SESSION_OPTIONS say
comes from here.
"""

import argparse
import itertools
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import corpus  # noqa: E402
from provenance import RESULTS, Provenance  # noqa: E402

SECONDS = 8
WORKERS = (1, 2)
LEVELS = ("ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
THREADS = (1, 2)


def cores(export: Path) -> list[dict]:
    """The configurations measured for one export."""
    from sentiment.serving.signature import INT8_ONNX_FILE, Signature

    signature = Signature.load(export)
    found = [{"runtime": "torchscript", "precision": "fp32", "threads": t} for t in THREADS]
    files = [("fp32", signature.onnx_file)] + ([("int8", INT8_ONNX_FILE)] if (export / INT8_ONNX_FILE).exists() else [])
    found += [{"runtime": "onnxruntime", "precision": p, "file": f, "threads": t, "level": level}
              for (p, f), t, level in itertools.product(files, THREADS, LEVELS) if p == "int8" or level == LEVELS[-1]]
    return found


def worker(export: str, config: dict, texts: list[str], batch: int, seconds: float, start, out) -> None:
    """One process: load the core as a worker does, then score batches until `seconds` have passed."""
    import torch

    from sentiment.serving.core import predict_proba
    from sentiment.serving.runtime import OnnxCore, load_torchscript
    from sentiment.serving.signature import Signature, load_encoder

    torch.set_num_threads(config["threads"])
    signature = Signature.load(Path(export))
    encoder = load_encoder(Path(export), signature)
    if config["runtime"] == "torchscript":
        core = load_torchscript(Path(export), signature)
    else:
        core = OnnxCore(Path(export) / config["file"], signature, config["threads"], config["level"])
    predict_proba(core, texts[:batch], encoder)  # warm-up
    start.wait()
    times, done, began = [], 0, time.perf_counter()
    for i in itertools.count():
        chunk = [texts[(i * batch + j) % len(texts)] for j in range(batch)]
        t = time.perf_counter()
        predict_proba(core, chunk, encoder)
        times.append(time.perf_counter() - t)
        done += batch
        if time.perf_counter() - began > seconds:
            break
    out.put({"texts": done, "seconds": time.perf_counter() - began, "batch_ms_p50": statistics.median(times) * 1000})


def measure(export: Path, config: dict, workers: int, texts: list[str], batch: int, seconds: float) -> dict:
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=worker, args=(str(export), config, texts, batch, seconds, start, out)) for _ in range(workers)]
    for p in processes:
        p.start()
    results = [out.get(timeout=600) for _ in processes]
    for p in processes:
        p.join()
    return {**config, "workers": workers, "texts_per_second": round(sum(r["texts"] / r["seconds"] for r in results), 1),
            "batch_ms_p50": round(statistics.median(r["batch_ms_p50"] for r in results), 2)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = sorted({r["version"] for r in rows})
    fig, axes = plt.subplots(1, len(versions), figsize=(7 * len(versions), 5), squeeze=False)
    for ax, version in zip(axes[0], versions):
        mine = sorted((r for r in rows if r["version"] == version), key=lambda r: r["texts_per_second"])
        labels = [f"{r['runtime']} {r['precision']} t{r['threads']} w{r['workers']}" + (f" {r['level'][11:].lower()}" if "level" in r else "")
                  for r in mine]
        ax.barh(labels, [r["texts_per_second"] for r in mine], color=["#d62728" if r["runtime"] == "torchscript" else "#1f77b4" for r in mine])
        ax.set_title(f"v{version}: mixed reviews, texts/s (all workers)")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=["1", "2"])
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--allow-dirty", action="store_true")
    args = parser.parse_args()
    run = Provenance(allow_dirty=args.allow_dirty)
    from sentiment.serving.signature import MAX_CHARS

    texts, described = corpus.mix(MAX_CHARS)
    rows = []
    for version in args.versions:
        export = ROOT / "build" / f"v{version}" / "export"
        batch = yaml.safe_load((ROOT / ("model-config.yaml" if version == "1" else "model-config-v2.yaml")).read_text())["batchSize"]
        for config, workers in itertools.product(cores(export), WORKERS):
            rows.append({"version": version, **measure(export, config, workers, texts, batch, args.seconds)})
            print(json.dumps(rows[-1]), flush=True)
    best = {v: max((r for r in rows if r["version"] == v), key=lambda r: r["texts_per_second"]) for v in args.versions}
    out = run.target(RESULTS / "ort_grid.json")
    out.write_text(json.dumps({"provenance": run.record(), "texts": described, "seconds": args.seconds, "rows": rows, "best": best}, indent=2) + "\n")
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}; best: {json.dumps(best)}")


if __name__ == "__main__":
    main()
