"""The load grid: TorchServe over workers x batch size, then a batch-delay sweep of the recommended
pair, each at every client count with the realistic mix of bodies; the choice of what to ship.

  wXbY      X workers, batch size Y, max batch delay GRID_DELAY_MS (re-registered through the
            management API on a private TorchServe with the model-control API on)
  wXbYdZ    the recommended workers x batch size with a max batch delay of Z ms
"""

import time
from pathlib import Path

from common import CONCURRENCY, MODEL, at, log
from measure import Bench
from servers import register, scale, torchserve, ts_groups

GRID_WORKERS = (1, 2)
GRID_BATCH = (1, 8, 32)
LATENCY_BUDGET_MS = 1.5  # what the batch delay may add to one client's p50 (see best_delay)
GRID_DELAY_MS = 5
DELAY_SWEEP_MS = (1, 2, 10)  # besides GRID_DELAY_MS, for the recommended workers x batch size
JVM_WARM_S = 8.0  # an unrecorded burst of predictions before the first point
SWEEP_RESERVE_S = 100  # seconds of the budget that must be left to try one more delay


def run(bench: Bench, results: dict, store: Path, batch_sizes: tuple = GRID_BATCH, sweep: tuple = DELAY_SWEEP_MS) -> None:
    """The grid, the choice (results["choice"]) and the final configuration (results["final_config"])."""
    with torchserve(store, model_api=True) as ts:
        predict = f"{ts.inference}/predictions/{MODEL}"
        groups = ts_groups(ts)
        log(f"warming the JVM up: {JVM_WARM_S:.0f} s of predictions at {CONCURRENCY[-1]} clients, not recorded")
        bench.burst(predict, CONCURRENCY[-1], JVM_WARM_S)
        for batch_size in batch_sizes:
            for i, workers in enumerate(GRID_WORKERS):
                started = time.monotonic()
                register(ts, workers, batch_size, GRID_DELAY_MS) if i == 0 else scale(ts, workers)
                log(f"registered w{workers} b{batch_size} d{GRID_DELAY_MS} in {time.monotonic() - started:.1f} s")
                config = {"workers": workers, "batch_size": batch_size, "max_batch_delay_ms": GRID_DELAY_MS}
                for c in CONCURRENCY:
                    bench.point(f"w{workers}b{batch_size}", predict, c, config, groups, ts=ts, grid=True)
        choice = choose(bench.points)
        results["choice"] = choice
        workers, batch_size = choice["recommended"]["workers"], choice["recommended"]["batch_size"]
        for delay in sweep if batch_size > 1 else ():  # no delay without batching
            if bench.time_left() < SWEEP_RESERVE_S:
                log(f"skipping max_batch_delay={delay} ms: {bench.time_left():.0f} s of the {bench.args.budget:.0f} s budget left")
                continue
            register(ts, workers, batch_size, delay)
            config = {"workers": workers, "batch_size": batch_size, "max_batch_delay_ms": delay}
            for c in CONCURRENCY:
                bench.point(f"w{workers}b{batch_size}d{delay}", predict, c, config, groups, ts=ts, sweep=True)
    results["final_config"] = {"workers": workers, "batch_size": batch_size,
                               "max_batch_delay_ms": best_delay(delay_sweep(bench.points, choice["recommended"]),
                                                                 min(p["latency_ms"]["p50"] for p in bench.points
                                                                     if p.get("grid") and p["concurrency"] == 1))}


def choose(points: list[dict]) -> dict:
    """workers x batch size from the grid (max batch delay GRID_DELAY_MS for all), by capacity() at the top
    concurrency: the throughput the configuration would sustain with the host to itself, from the
    CPU it spent per request. Unlike the raw throughput of a point, that barely depends on how much
    CPU other processes happened to leave during it. recommended = the fewest workers, then the
    smallest batch, among the error-free configurations within 10 % of the highest capacity (the
    delay is chosen next, by the sweep). The highest raw throughput is reported beside it."""
    top = CONCURRENCY[-1]
    grid = list(dict.fromkeys(p["case"] for p in points if p.get("grid")))
    config_of = {p["case"]: p["config"] for p in points if p.get("grid")}
    cap = {case: at(points, case, top).get("capacity_rps") or 0 for case in grid}
    rps = {case: at(points, case, top)["throughput_rps"] for case in grid}
    clean = [case for case in grid if not any(p["errors"] for p in points if p["case"] == case)] or grid
    best = max(clean, key=cap.get)
    recommended = min((case for case in clean if cap[case] >= 0.9 * cap[best]),
                      key=lambda case: (config_of[case]["workers"], config_of[case]["batch_size"]))
    fastest = max(grid, key=rps.get)
    return {"recommended_case": recommended, "recommended": config_of[recommended], "highest_capacity_case": best,
            "fastest_case": fastest, f"capacity_rps_at_{top}": cap, f"throughput_at_{top}": rps,
            "rule": " ".join(choose.__doc__.split())}


def delay_sweep(points: list[dict], config: dict) -> dict:
    """{max_batch_delay_ms: {concurrency: numbers}} for this workers x batch size (grid and sweep points)."""
    swept = {}
    for p in points:
        if (p.get("grid") or p.get("sweep")) and p["config"].get("workers") == config["workers"] \
                and p["config"].get("batch_size") == config["batch_size"]:
            swept.setdefault(p["config"]["max_batch_delay_ms"], {})[p["concurrency"]] = {
                "rps": p["throughput_rps"], "p50": p["latency_ms"]["p50"], "p99": p["latency_ms"]["p99"],
                "avg_batch": p.get("avg_batch_size"), "server_cpu_us_per_request": p.get("server_cpu_us_per_request")}
    return dict(sorted(swept.items()))


def best_delay(swept: dict, floor_ms: float) -> int:
    """maxBatchDelay by a stated objective: the most req/s at the top concurrency among the delays
    whose p50 at one client stays within LATENCY_BUDGET_MS of `floor_ms` (the grid's lowest p50 at one
    client: unbatched); the smallest delay if none does. A batch delay is pure added latency for a
    lone client, so this buys throughput under load only with latency a single client barely sees."""
    if len(swept) < 2:
        return next(iter(swept), GRID_DELAY_MS)
    top = CONCURRENCY[-1]
    fits = [d for d, rows in swept.items() if 1 in rows and top in rows and rows[1]["p50"] <= floor_ms + LATENCY_BUDGET_MS]
    return max(fits, key=lambda d: swept[d][top]["rps"]) if fits else min(swept)


