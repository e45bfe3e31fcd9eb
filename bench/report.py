"""The analysis of the measured points, and summary.md: the targets (TorchServe against the peers
users would deploy instead and against its own /ping, from the head-to-head), where one request's
time goes, and the recommended model-config.yaml."""

import statistics

import psutil

from common import CONCURRENCY, at
from grid import best_delay, delay_sweep
from measure import capacity

PING = "torchserve-ping"


def h2h_point(points: list[dict], server: str, body: str, concurrency: int) -> dict | None:
    return next((p for p in points if p.get("h2h") and p["server"] == server and p["body"] == body
                 and p["concurrency"] == concurrency), None)


def ratio_check(value: float, target: float, higher_is_better: bool) -> dict:
    met = value >= target if higher_is_better else value <= target
    return {"ratio": round(value, 3), "target": f"{'>=' if higher_is_better else '<='} {target}", "met": met,
            "margin": f"{(value / target - 1) * 100:+.0f} % vs target"}


# The performance issue's targets, per model version: (name, server compared with, body, concurrency,
# measured quantity, bound, higher is better). Throughput and latency come from the head-to-head.
TARGETS = {
    "1": [("req/s vs fastapi-2workers, short, c=32", "fastapi-2workers", "short", 32, "throughput", 1.3, True),
          ("req/s vs fastapi-2workers, long, c=32", "fastapi-2workers", "long", 32, "throughput", 1.3, True),
          ("p99 vs fastapi-2workers, short, c=32", "fastapi-2workers", "short", 32, "p99", 1.0, False),
          ("p99 vs fastapi-2workers, long, c=32", "fastapi-2workers", "long", 32, "p99", 1.0, False),
          ("req/s vs /ping, short, c=32", PING, "short", 32, "throughput", 0.45, True),
          ("p50 ms, short, c=1", None, "short", 1, "p50", 2.5, False),
          ("largest worker RSS MB, mix, c=32", None, "mix", 32, "worker_rss", 300, False)],
    "2": [("req/s vs fastapi-2workers, mix, c=32", "fastapi-2workers", "mix", 32, "throughput", 1.5, True),
          ("req/s vs litserve, mix, c=32", "litserve", "mix", 32, "throughput", 1.0, True)],
}


def measured(point: dict, quantity: str) -> float:
    if quantity == "throughput":
        return point["throughput_rps"]
    if quantity == "worker_rss":
        return max(p["rss_mb"] for p in point["memory"]["processes"] if p["group"] == "workers")
    return point["latency_ms"][quantity]


def targets(results: dict, body: str = "mix") -> dict:
    """The issue's targets for this model version (TARGETS), each met or missed with its margin; at the
    top client count with the realistic mix, TorchServe's ratios to every peer, the CPU per request
    behind each (what decides the ratios on a CPU-bound host), and, where measured, the gap to the
    in-process ceilings."""
    points, top = results["points"], CONCURRENCY[-1]
    servers = list(dict.fromkeys(p["server"] for p in points if p.get("h2h")))
    at_top = {s: h2h_point(points, s, body, top) for s in servers}
    ts = at_top.get("torchserve")
    if not (ts and ts["throughput_rps"]):
        return {}
    checks = {}
    for name, peer, check_body, concurrency, quantity, bound, higher in TARGETS.get(results["config"]["model_version"], []):
        ours = h2h_point(points, "torchserve", check_body, concurrency)
        other = h2h_point(points, peer, check_body, concurrency) if peer else None
        if ours and (other or not peer):
            value = measured(ours, quantity) / measured(other, quantity) if peer else measured(ours, quantity)
            checks[name] = ratio_check(value, bound, higher)
    out = {
        "body": body, "concurrency": top, "throughput_rps": ts["throughput_rps"], "p99_ms": ts["latency_ms"]["p99"],
        "checks": checks,
        "torchserve_vs": {s: {"throughput": round(ts["throughput_rps"] / p["throughput_rps"], 3) if p["throughput_rps"] else None,
                              "p99": round(ts["latency_ms"]["p99"] / p["latency_ms"]["p99"], 3) if p["latency_ms"]["p99"] else None}
                          for s, p in at_top.items() if p and s != "torchserve"},
        "cpu_us_per_request": {s: {"server": p.get("server_cpu_us_per_request"), "client": p.get("client_cpu_us_per_request")}
                               for s, p in at_top.items() if p},
        "capacity_with_host_to_itself": {"note": " ".join(capacity.__doc__.split()),
                                         **{s: p.get("capacity_rps") for s, p in at_top.items() if p}},
    }
    ceilings, profile = results.get("ceilings"), results.get("worker_profile")
    if ceilings:
        forward64 = ceilings["batches"]["64"]["torchscript"]["texts_per_cpu_s"]
        serve64 = ceilings["batches"]["64"]["torchscript"]["encode_plus_forward_texts_per_cpu_s"]
        worker = profile["batch_sizes"].get(str(ts["config"].get("batchSize")))
        out["vs_ceilings"] = {
            "forward_only_b64": round(ts["throughput_rps"] / forward64, 4),
            "encode_plus_forward_b64_one_core": round(ts["throughput_rps"] / serve64, 3),
            "worker_in_process_one_core": round(ts["throughput_rps"] / worker["worker_ceiling_rps_per_core"], 3) if worker else None,
            "note": f"TorchServe's req/s over in-process texts per CPU-second of one core (the host has {psutil.cpu_count()})"}
    return out


STEP_NAMES = {"decode": "JSON decode + framing", "preprocess": "handler preprocess (validation)", "encode": "tokenise + encode",
              "forward": "forward", "inference_other": "rest of inference (tensors, sigmoid, tolist)",
              "postprocess": "postprocess + prediction metrics", "response": "response JSON + framing",
              "predict_other": "TorchServe service + handler metrics"}


def breakdown(points: list[dict], profile: dict | None) -> dict:
    """Where the time of one request goes (w1b1, one client, one request in flight): the client's
    latency, TorchServe's own clock (ts_inference_latency_microseconds: from the request's arrival in
    the frontend to its response), and the worker's Python path measured in-process in CPU time, by
    step. Beside it, the CPU each process spent per request, at one client and at the top concurrency
    (the JVM also works off the request path: it parses and writes every log and metric line the
    worker prints, collects garbage, polls), so those are costs, not shares of the latency."""
    result = {}
    point = at(points, "w1b1", 1)
    if point and point["throughput_rps"]:
        n, client_ms = point["throughput_rps"], point["latency_ms"]["mean"]
        frontend_ms = point["torchserve"].get("frontend_latency_ms_mean")
        result = {"point": "w1b1 at concurrency 1 (one request in flight)",
                  "client_latency_ms_mean": client_ms, "client_latency_ms_p50": point["latency_ms"]["p50"],
                  "frontend_clock_ms_mean": frontend_ms, "frontend_queue_ms_mean": point["torchserve"].get("frontend_queue_ms_mean"),
                  "cpu_ms_per_request_at_1_client": {**{name: round(cores / n * 1e3, 3) for name, cores in point["cpu_cores"].items()
                                                        if name not in ("machine_busy", "other_processes")},
                                                     "client": round(point["client_cpu_cores"] / n * 1e3, 3)}}
        if profile and frontend_ms:
            steps_us = profile["batch_sizes"]["1"]["per_request_us"]
            worker_ms = profile["batch_sizes"]["1"]["worker_total_per_request_us"] / 1e3
            result["worker_python_cpu_ms"] = round(worker_ms, 3)
            result["worker_steps_cpu_ms"] = {STEP_NAMES.get(k, k): round(v / 1e3, 4) for k, v in steps_us.items() if k not in ("predict", "inference")}
            result["shares_of_client_latency"] = {
                "outside TorchServe's clock: client, HTTP on loopback, Netty read/write": round((client_ms - frontend_ms) / client_ms, 3),
                "inside it, besides the worker's Python: queue, batching, Unix-socket IPC, wake-ups": round(max(0.0, frontend_ms - worker_ms) / client_ms, 3),
                "worker Python (JSON, handler, response)": round(min(worker_ms, frontend_ms) / client_ms, 3),
                **{f"  of which {STEP_NAMES.get(k, k)}": round(v / 1e3 / client_ms, 3) for k, v in steps_us.items()
                   if k in ("decode", "encode", "forward", "postprocess", "response")}}
    under_load = {}
    for case in dict.fromkeys(p["case"] for p in points if p["concurrency"] == CONCURRENCY[-1] and p["requests"]):
        rows = [p for p in points if p["case"] == case and p["concurrency"] == CONCURRENCY[-1] and p["requests"]]
        per = {}
        for p in rows:
            for name, cores in p["cpu_cores"].items():
                if name not in ("machine_busy", "other_processes"):
                    per.setdefault(name, []).append(cores / p["throughput_rps"] * 1e6)
            per.setdefault("client", []).append(p["client_cpu_cores"] / p["throughput_rps"] * 1e6)
        under_load[case] = {name: round(statistics.median(v), 1) for name, v in per.items()}
        under_load[case]["total"] = round(sum(under_load[case].values()), 1)
    result["cpu_us_per_request_at_top_concurrency"] = under_load
    return result


def recommended_defaults(results: dict) -> dict:
    """The configuration to ship, with the numbers behind it."""
    final = results["final_config"]
    return {
        "model_config_yaml": {"minWorkers": final["workers"], "maxWorkers": final["workers"], "batchSize": final["batch_size"],
                              "maxBatchDelay": final["max_batch_delay_ms"]},
        "workers_and_batch_rule": results["choice"]["rule"],
        "delay_rule": " ".join(best_delay.__doc__.split()),
        "delay_sweep": delay_sweep(results["points"], final),
    }


# ---------------------------------------------------------------- summary.md

def num(value, fmt: str = ".0f") -> str:
    return "" if value is None else format(value, fmt)


def summary_markdown(results: dict) -> str:
    points, top, cs = results["points"], CONCURRENCY[-1], list(CONCURRENCY)
    prov = results["provenance"]
    lines = [f"Model version {results['config']['model_version']}, commit {prov['git_commit'][:12]}"
             f"{'' if prov['git_clean'] else ' (DIRTY tree: not for README)'}; {results['config']['warmup_s']} s warm-up + "
             f"{results['config']['duration_s']} s per point, {psutil.cpu_count()} cores shared by servers and client.", "",
             "Head-to-head, each server alone, the same bodies and client (server CPU and RSS: its whole process tree):", "",
             "| server | body | " + " | ".join(f"req/s c={c}" for c in cs) + f" | p50 ms c=1 | p99 ms c={top} | "
             f"server CPU us/req c={top} | RSS MB c={top} | errors |", "|---|---|" + "---:|" * (len(cs) + 5)]
    for server in dict.fromkeys(p["server"] for p in points if p.get("h2h")):
        for body in dict.fromkeys(p["body"] for p in points if p.get("h2h")):
            row = {c: h2h_point(points, server, body, c) for c in cs}
            if not all(row.values()):
                continue
            lines.append(f"| {server} | {body} | " + " | ".join(f"{row[c]['throughput_rps']:.0f}" for c in cs)
                         + f" | {num(row[1]['latency_ms']['p50'], '.1f')} | {num(row[top]['latency_ms']['p99'], '.1f')}"
                         + f" | {num(row[top].get('server_cpu_us_per_request'))} | {row[top]['memory']['rss_mb']:.0f}"
                         + f" | {sum(p['errors'] for p in row.values())} |")
    parity, nagle = results.get("head_to_head_parity"), results.get("tcp_nodelay_check")
    if parity:
        lines += ["", "Same answers: largest |probability difference| from TorchServe on the sample: "
                  + ", ".join(f"{k} {v:.1e}" for k, v in parity["max_abs_diff_vs_torchserve"].items())]
    if nagle:
        lines += ["", f"TCP_NODELAY check ({nagle['server']}, 1 client, short): " + "; ".join(
            f"{k.replace('_', ' ')} {v['req_per_s']:.0f} req/s, p50 {v['p50_ms']} ms" for k, v in nagle.items() if isinstance(v, dict))]
    t = results.get("targets")
    if t:
        lines += ["", "Targets: " + "; ".join(f"{name} {check['ratio']} ({'met' if check['met'] else 'MISSED'}: "
                                               f"target {check['target']}, {check['margin']})" for name, check in t["checks"].items()),
                  "", f"At c={top}, {t['body']}: TorchServe {t['throughput_rps']:.0f} req/s, p99 {num(t['p99_ms'], '.1f')} ms; TorchServe over each (throughput, p99): " + "; ".join(
                      f"{s} {v['throughput']}x, {v['p99']}x" for s, v in t["torchserve_vs"].items())
                  + ". Capacity with the host to itself (req/s): " + ", ".join(
                      f"{s} {v}" for s, v in t["capacity_with_host_to_itself"].items() if s != "note")]
    scoring = results.get("scoring_ceiling")
    if scoring:
        lines += ["", "In-process scoring function (featurise + forward + sigmoid), one thread, texts per CPU-second by batch size: "
                  + "; ".join(f"{kind} " + ", ".join(f"b{size} {rate:.0f}" for size, rate in rates.items())
                              for kind, rates in scoring["texts_per_cpu_s"].items())]
    lines += grid_table(points) + ceilings_lines(results)
    rec = results["recommended_defaults"]
    lines += ["", "Recommended model-config.yaml: " + ", ".join(f"{k}: {v}" for k, v in rec["model_config_yaml"].items())
              + f" (grid choice {results['choice']['recommended_case']}; highest capacity {results['choice']['highest_capacity_case']}, "
              f"highest req/s {results['choice']['fastest_case']})"]
    other = [p["cpu_cores"]["other_processes"] for p in points]
    lines += ["", f"Background CPU from other processes during the points: mean {statistics.mean(other):.2f}, max {max(other):.2f} "
              f"of {psutil.cpu_count()} cores; load average {results['machine']['load_average_at_start']} at start, "
              f"{results['machine'].get('load_average_at_end')} at end. Total run {results['run_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def grid_table(points: list[dict]) -> list[str]:
    top, cs = CONCURRENCY[-1], list(CONCURRENCY)
    grid = [p for p in points if p.get("grid") or p.get("sweep")]
    lines = ["", "TorchServe grid (mix; capacity = the req/s the server would sustain with the host to itself, from its CPU "
             "per request; other CPU = cores used by other processes during the point):", "",
             "| case | " + " | ".join(f"req/s c={c}" for c in cs) + " | " + " | ".join(f"p99 ms c={c}" for c in cs)
             + f" | p50 ms c=1 | server CPU us/req c={top} | capacity req/s c={top} | batch c={top} | errors | other CPU |",
             "|---|" + "---:|" * (2 * len(cs) + 6)]
    for case in dict.fromkeys(p["case"] for p in grid):
        rows = {p["concurrency"]: p for p in grid if p["case"] == case}
        get = lambda c, f: f(rows[c]) if c in rows else ""  # noqa: E731
        other = statistics.mean(r["cpu_cores"]["other_processes"] for r in rows.values())
        lines.append(f"| {case} | " + " | ".join(get(c, lambda r: f"{r['throughput_rps']:.0f}") for c in cs) + " | "
                     + " | ".join(get(c, lambda r: num(r["latency_ms"]["p99"], ".1f")) for c in cs)
                     + f" | {get(1, lambda r: num(r['latency_ms']['p50'], '.1f'))} | {get(top, lambda r: num(r.get('server_cpu_us_per_request')))}"
                     + f" | {get(top, lambda r: num(r.get('capacity_rps')))} | {get(top, lambda r: num(r.get('avg_batch_size'), '.1f'))}"
                     + f" | {sum(r['errors'] for r in rows.values())} | {other:.2f} |")
    return lines


def ceilings_lines(results: dict) -> list[str]:
    if not results.get("ceilings"):
        return ["", "In-process ceilings: not measured for this model version."]
    lines = ["", "In-process ceilings, the archive's code, texts per CPU-second (one thread unless stated):", "",
             "| batch | encode (sentiment/serving/text.py) | TorchScript fwd | eager fwd | ONNX Runtime fwd | TorchScript fwd, 2 threads | encode + TorchScript |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for b, e in results["ceilings"]["batches"].items():
        cells = [num(e[name]["texts_per_cpu_s"]) if name in e else "n/a" for name in ("encode", "torchscript", "eager", "onnxruntime")]
        two = e.get("torchscript_2_threads")
        cells.append(f"{num(two['texts_per_cpu_s'])} ({num(two['texts_per_wall_s'])}/s wall)" if two else "n/a")
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {num(e['torchscript']['encode_plus_forward_texts_per_cpu_s'])} |")
    lines += ["", f"Parity with the archive's TorchScript core: {results['ceilings']['parity']}"]
    steps = results["ceilings"].get("encode_steps_us_per_text")
    if steps:
        lines += ["", "Encode, CPU us per text of the mix: " + ", ".join(f"{k} {v}" for k, v in steps.items())]
    b = results.get("breakdown", {})
    if "shares_of_client_latency" in b:
        lines += ["", f"One request (w1b1, c=1): client latency {b['client_latency_ms_mean']} ms mean, TorchServe's own clock "
                  f"{b['frontend_clock_ms_mean']} ms, the worker's Python path {b['worker_python_cpu_ms']} ms CPU (in-process). Shares of the "
                  "client's latency: " + "; ".join(f"{k.strip()} {v:.0%}" for k, v in b["shares_of_client_latency"].items()),
                  "", "CPU ms per request at c=1 (costs, not latency shares; the JVM also handles the worker's log lines): "
                  + ", ".join(f"{k} {v}" for k, v in b["cpu_ms_per_request_at_1_client"].items())]
    return lines


def readme_table(results: dict) -> str:
    """The head-to-head as README shows it (tests/test_readme_numbers.py checks that README holds exactly this)."""
    rows = {(r["server"], r["body"], r["concurrency"]): r for r in results["head_to_head"]}
    top = CONCURRENCY[-1]
    lines = ["| server, 32 clients | req/s short | req/s long | req/s mix | p99 ms mix | p50 ms short, 1 client | server CPU us/req mix | RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for server in dict.fromkeys(r["server"] for r in results["head_to_head"]):
        mix, short1 = rows[(server, "mix", top)], rows[(server, "short", 1)]
        name = f"**{server}**" if server == "torchserve" else server
        lines.append(f"| {name} | " + " | ".join(f"{rows[(server, body, top)]['req_per_s']:,.0f}" for body in ("short", "long", "mix"))
                     + f" | {mix['p99_ms']:,.1f} | {short1['p50_ms']:.1f} | {mix['cpu_us_per_req']:,.0f} | {mix['rss_mb']:,.0f} |")
    return "\n".join(lines)
