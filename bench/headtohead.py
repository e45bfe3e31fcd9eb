"""The target comparison at the top client count, in interleaved rounds so that every case shares
the same background load: naive, TorchServe in the final configuration, its /ping, and the same
configuration on one more TorchServe per frontend variant (VARIANTS)."""

import statistics
from contextlib import ExitStack
from pathlib import Path

import psutil

from common import CONCURRENCY, MODEL, log
from local_server import LocalTorchServe
from measure import Bench, tree
from servers import naive_server, register, stop_process, torchserve, ts_groups

H2H_ROUNDS = 3  # interleaved rounds
H2H_WARM_S = 5.0  # an unrecorded burst per server before the rounds
# Frontend settings tried against config.properties, each on its own server. fresh_jvm is the
# control: a second server with config.properties unchanged, started and warmed exactly like the
# variants (a fresh JVM spends several times the frontend CPU per request until its JIT has run).
VARIANTS = {"fresh_jvm": {}, "netty1": {"number_of_netty_threads": "1", "netty_client_threads": "1"}}
VARIANTS_RESERVE_S = 150  # seconds of the budget that must be left to start the variants


def head_to_head(bench: Bench, results: dict, ts: LocalTorchServe, store: Path, final: dict, model_dir: Path) -> None:
    """The target comparisons at the top concurrency, interleaved so that every case sees the same
    background load: naive, TorchServe with the final configuration, its /ping, and (unless
    --skip-variants) the same configuration on one more TorchServe per VARIANTS entry, in turn,
    H2H_ROUNDS times. The targets are computed from the medians of these rounds."""
    top = CONCURRENCY[-1]
    process, naive_url = naive_server(model_dir, bench.scratch, nodelay=True)
    try:
        with ExitStack() as stack:
            cases = [("naive", naive_url + f"/predictions/{MODEL}", {"server": lambda: tree(psutil.Process(process.pid))}, True, None, {}),
                     ("torchserve", f"{ts.inference}/predictions/{MODEL}", ts_groups(ts), True, ts, final),
                     ("ping", ts.inference + "/ping", ts_groups(ts), False, ts, {})]
            variants = {} if bench.args.skip_variants else VARIANTS
            if variants and bench.time_left() < VARIANTS_RESERVE_S:
                log(f"skipping the frontend variants: {bench.time_left():.0f} s of the {bench.args.budget:.0f} s budget left")
                variants = {}
            for name, overrides in variants.items():
                server = stack.enter_context(torchserve(store, overrides))
                register(server, final["workers"], final["batch_size"], final["max_batch_delay_ms"])
                cases.append((f"torchserve_{name}", f"{server.inference}/predictions/{MODEL}", ts_groups(server), True, server,
                              {**final, **overrides}))
            for _, url, _, post, _, _ in cases:
                bench.burst(url, top, H2H_WARM_S, post)
            for round_ in range(1, H2H_ROUNDS + 1):
                shift = (round_ - 1) % len(cases)  # rotate the order, so no case always follows the same one
                for name, url, groups, post, server, config in cases[shift:] + cases[:shift]:
                    bench.point(f"h2h_{name}", url, top, config, groups, post=post, ts=server, h2h=round_)
    finally:
        stop_process(process)


def h2h_medians(points: list[dict]) -> dict:
    """Per head-to-head case: the median (and range) over the interleaved rounds."""
    out = {}
    for case in dict.fromkeys(p["case"] for p in points if p.get("h2h")):
        rows = [p for p in points if p["case"] == case]
        rps = [p["throughput_rps"] for p in rows]
        p99 = [p["latency_ms"]["p99"] for p in rows if p["latency_ms"]["p99"] is not None]
        median = lambda key: round(statistics.median(p.get(key) or 0 for p in rows), 2)  # noqa: E731
        out[case.removeprefix("h2h_")] = {
            "config": rows[0]["config"], "rounds": len(rows),
            "throughput_rps": round(statistics.median(rps), 1), "throughput_range": [min(rps), max(rps)],
            "p50_ms": round(statistics.median(p["latency_ms"]["p50"] for p in rows), 3),
            "p99_ms": round(statistics.median(p99), 3) if p99 else None, "p99_range": [min(p99), max(p99)] if p99 else None,
            "errors": sum(p["errors"] for p in rows),
            "server_cpu_us_per_request": median("server_cpu_us_per_request"),
            "worker_cpu_us_per_request": median("worker_cpu_us_per_request") or None,
            "capacity_rps": median("capacity_rps"),
            "client_cpu_us_per_request": median("client_cpu_us_per_request"),
            "client_cpu_cores": round(statistics.median(p["client_cpu_cores"] for p in rows), 3),
            "other_processes_cpu_cores": round(statistics.median(p["cpu_cores"]["other_processes"] for p in rows), 3),
            "avg_batch_size": median("avg_batch_size") or None,
        }
    return out


def frontend_verdicts(h2h: dict) -> dict:
    """Each frontend variant against the control started and warmed the same way (fresh_jvm),
    judged on server CPU per request (throughput follows it on a saturated host)."""
    control = h2h.get("torchserve_fresh_jvm")
    out = {}
    for name, h in h2h.items():
        if name.startswith("torchserve_") and name != "torchserve_fresh_jvm" and control:
            cost = h["server_cpu_us_per_request"] / control["server_cpu_us_per_request"]
            out[name.removeprefix("torchserve_")] = {
                "config": h["config"], "throughput_rps": h["throughput_rps"], "p99_ms": h["p99_ms"],
                "server_cpu_us_per_request": h["server_cpu_us_per_request"],
                "control_throughput_rps": control["throughput_rps"], "control_p99_ms": control["p99_ms"],
                "control_server_cpu_us_per_request": control["server_cpu_us_per_request"],
                "throughput_vs_control": round(h["throughput_rps"] / control["throughput_rps"], 2),
                "cpu_per_request_vs_control": round(cost, 2),
                "verdict": "no worse (CPU per request within 10 %)" if cost <= 1.1 else "worse: keep the default"}
    return out

