"""The analysis of the measured points: targets against the naive app and /ping, where one
request's time goes, the recommended model-config.yaml, and summary.md."""

import json
import statistics

import psutil

from common import CONCURRENCY, at
from grid import best_delay, delay_sweep
from headtohead import frontend_verdicts
from measure import capacity


def ratio_check(value: float, target: float, higher_is_better: bool) -> dict:
    met = value >= target if higher_is_better else value <= target
    return {"ratio": round(value, 3), "target": f"{'>=' if higher_is_better else '<='} {target}", "met": met,
            "margin": f"{(value / target - 1) * 100:+.0f} % vs target"}


def targets(results: dict) -> dict:
    """The targets at the top concurrency, from the interleaved head-to-head medians (TorchServe in
    the final configuration vs naive vs /ping), and for reference from the single grid pass (the
    final configuration's grid point against the naive and /ping points measured minutes earlier).
    Also the CPU time per request behind each, which is what decides the ratios on a CPU-bound host."""
    points, ceilings, profile = results["points"], results["ceilings"], results["worker_profile"]
    top = CONCURRENCY[-1]
    forward64 = ceilings["batches"]["64"]["torchscript"]["texts_per_cpu_s"]
    serve64 = ceilings["batches"]["64"]["torchscript"]["encode_plus_forward_texts_per_cpu_s"]
    cores = psutil.cpu_count()

    def block(ts: dict, naive: dict, ping: dict, batch_size: int) -> dict:
        worker = profile["batch_sizes"].get(str(batch_size))
        return {
            "throughput_rps": ts["throughput_rps"], "p99_ms": ts["p99_ms"],
            "naive_throughput_rps": naive["throughput_rps"], "naive_p99_ms": naive["p99_ms"], "ping_rps": ping["throughput_rps"],
            "throughput_vs_naive": ratio_check(ts["throughput_rps"] / naive["throughput_rps"], 1.0, True),
            "p99_vs_naive": ratio_check(ts["p99_ms"] / naive["p99_ms"], 1.5, False),
            "throughput_vs_ping": ratio_check(ts["throughput_rps"] / ping["throughput_rps"], 0.5, True),
            "cpu_us_per_request": {"torchserve": {"server": ts["server_cpu_us_per_request"], "client": ts["client_cpu_us_per_request"]},
                                   "naive": {"server": naive["server_cpu_us_per_request"], "client": naive["client_cpu_us_per_request"]},
                                   "ping": {"server": ping["server_cpu_us_per_request"], "client": ping["client_cpu_us_per_request"]}},
            "capacity_with_host_to_itself": {
                "note": " ".join(capacity.__doc__.split()),
                "torchserve_rps": ts["capacity_rps"], "naive_rps": naive["capacity_rps"], "ping_rps": ping["capacity_rps"],
                "torchserve_vs_naive": round(ts["capacity_rps"] / naive["capacity_rps"], 2),
                "torchserve_vs_ping": round(ts["capacity_rps"] / ping["capacity_rps"], 3)},
            "vs_forward_only_ceiling_b64": {"ratio": round(ts["throughput_rps"] / forward64, 4), "ceiling_texts_per_cpu_s": forward64,
                                            "note": "TorchScript forward alone, one thread, batches of 64 pre-encoded texts"},
            "vs_encode_plus_forward_ceiling_b64": {"ratio": round(ts["throughput_rps"] / serve64, 3), "ceiling_texts_per_cpu_s": serve64,
                                                   "note": "the archive's encode + forward per CPU-second of one core; the host has "
                                                           f"{cores}, shared with the frontend, the client and other processes"},
            "vs_worker_in_process_ceiling": {
                "ratio": round(ts["throughput_rps"] / worker["worker_ceiling_rps_per_core"], 3) if worker else None,
                "ceiling_rps_per_core": worker["worker_ceiling_rps_per_core"] if worker else None,
                "note": f"one worker's whole Python path (JSON, handler, response) at batch {batch_size}, in-process, per CPU-second"},
        }

    out = {}
    h2h = results.get("head_to_head", {})
    if {"naive", "torchserve", "ping"} <= h2h.keys():
        t = h2h["torchserve"]
        out["head_to_head"] = {"case": "final configuration " + json.dumps(t["config"]), "concurrency": top,
                               "source": f"medians of {t['rounds']} interleaved rounds",
                               **block(t, h2h["naive"], h2h["ping"], t["config"]["batch_size"])}
    final = results["final_config"]
    case = next((p["case"] for p in points if (p.get("grid") or p.get("sweep")) and p["config"] == final), None)
    if case:
        one = lambda p: {**p, "p99_ms": p["latency_ms"]["p99"]}  # noqa: E731
        out["grid_pass"] = {"case": case, "concurrency": top, "source": "single pass, points measured minutes apart",
                            **block(one(at(points, case, top)), one(at(points, "naive", top)), one(at(points, "ping", top)), final["batch_size"])}
    return out


def breakdown(points: list[dict], profile: dict) -> dict:
    """Where the time of one request goes (w1b1, one client, one request in flight): the client's
    latency, TorchServe's own clock (ts_inference_latency_microseconds: from the request's arrival in
    the frontend to its response), and the worker's Python path measured in-process in CPU time, by
    step. Beside it, the CPU each process spent per request, at one client and at the top concurrency
    (the JVM also works off the request path: it parses and writes every log and metric line the
    worker prints, collects garbage, polls), so those are costs, not shares of the latency."""
    point = at(points, "w1b1", 1)
    n = point["throughput_rps"]
    client_ms = point["latency_ms"]["mean"]
    frontend_ms = point["torchserve"].get("frontend_latency_ms_mean")
    steps_us = profile["batch_sizes"]["1"]["per_request_us"]
    worker_ms = profile["batch_sizes"]["1"]["worker_total_per_request_us"] / 1e3
    step_names = {"decode": "JSON decode + framing", "preprocess": "handler preprocess (validation)", "encode": "tokenise + encode",
                  "forward": "forward", "inference_other": "rest of inference (tensors, sigmoid, tolist)",
                  "postprocess": "postprocess + prediction metrics", "response": "response JSON + framing",
                  "predict_other": "TorchServe service + handler metrics"}
    result = {
        "point": "w1b1 at concurrency 1 (one request in flight)",
        "client_latency_ms_mean": client_ms, "client_latency_ms_p50": point["latency_ms"]["p50"],
        "frontend_clock_ms_mean": frontend_ms, "frontend_queue_ms_mean": point["torchserve"].get("frontend_queue_ms_mean"),
        "worker_python_cpu_ms": round(worker_ms, 3),
        "worker_steps_cpu_ms": {step_names.get(k, k): round(v / 1e3, 4) for k, v in steps_us.items() if k not in ("predict", "inference")},
        "cpu_ms_per_request_at_1_client": {**{name: round(cores / n * 1e3, 3) for name, cores in point["cpu_cores"].items()
                                             if name not in ("machine_busy", "other_processes")},
                                          "client": round(point["client_cpu_cores"] / n * 1e3, 3)},
    }
    if frontend_ms:
        inside = max(0.0, frontend_ms - worker_ms)
        result["shares_of_client_latency"] = {
            "outside TorchServe's clock: client, HTTP on loopback, Netty read/write": round((client_ms - frontend_ms) / client_ms, 3),
            "inside it, besides the worker's Python: queue, batching, Unix-socket IPC, wake-ups": round(inside / client_ms, 3),
            "worker Python (JSON, handler, response)": round(min(worker_ms, frontend_ms) / client_ms, 3),
            **{f"  of which {step_names.get(k, k)}": round(v / 1e3 / client_ms, 3) for k, v in steps_us.items()
               if k in ("decode", "encode", "forward", "postprocess", "response")},
        }
    under_load = {}
    for case in dict.fromkeys(p["case"] for p in points if p["concurrency"] == CONCURRENCY[-1] and p["requests"]):
        rows = [p for p in points if p["case"] == case and p["concurrency"] == CONCURRENCY[-1]]
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
        "delay_rule": best_delay.__doc__.strip(),
        "delay_sweep": delay_sweep(results["points"], final),
        "frontend_variants": frontend_verdicts(results.get("head_to_head", {})),
    }


def summary_markdown(results: dict) -> str:
    points, top = results["points"], CONCURRENCY[-1]
    cs = list(CONCURRENCY)
    short = {"workers": "w", "batch_size": "b", "max_batch_delay_ms": "delay", "tcp_nodelay": "nodelay", "torch_threads": "threads",
             "number_of_netty_threads": "netty", "netty_client_threads": "netty_client"}
    describe = lambda config: " ".join(f"{short.get(k, k)}={v}" for k, v in config.items())  # noqa: E731
    num = lambda v, fmt=".0f": "" if v is None else format(v, fmt)  # noqa: E731
    main_points = [p for p in points if not p.get("h2h")]
    lines = [f"Single pass, {results['config']['warmup_s']} s warm-up + {results['config']['duration_s']} s per point. "
             "other CPU = cores used by other processes during the point; capacity = the req/s the server would sustain "
             "with the host to itself, from its CPU per request (see results.json):", "",
             "| case | config | " + " | ".join(f"req/s c={c}" for c in cs) + " | " + " | ".join(f"p99 ms c={c}" for c in cs)
             + f" | p50 ms c=1 | server CPU us/req c={top} | capacity req/s c={top} | batch c={top} | errors | other CPU |",
             "|---|---|" + "---:|" * (2 * len(cs) + 6)]
    for case in dict.fromkeys(p["case"] for p in main_points):
        rows = {p["concurrency"]: p for p in main_points if p["case"] == case}
        get = lambda c, f: f(rows[c]) if c in rows else ""  # noqa: E731
        other = statistics.mean(r["cpu_cores"]["other_processes"] for r in rows.values())
        lines.append(f"| {case} | {describe(next(iter(rows.values()))['config'])} | "
                     + " | ".join(get(c, lambda r: f"{r['throughput_rps']:.0f}") for c in cs) + " | "
                     + " | ".join(get(c, lambda r: num(r["latency_ms"]["p99"], ".1f")) for c in cs)
                     + f" | {get(1, lambda r: num(r['latency_ms']['p50'], '.1f'))} | {get(top, lambda r: num(r.get('server_cpu_us_per_request')))}"
                     + f" | {get(top, lambda r: num(r.get('capacity_rps')))}"
                     + f" | {get(top, lambda r: num(r.get('avg_batch_size'), '.1f'))} | {sum(r['errors'] for r in rows.values())} | {other:.2f} |")
    h2h = results.get("head_to_head", {})
    if h2h:
        lines += ["", f"Head-to-head at c={top}: the cases in turn, {next(iter(h2h.values()))['rounds']} rounds, medians:", "",
                  "| case | config | req/s (min-max) | p50 ms | p99 ms | server CPU us/req | client CPU us/req | capacity req/s | batch | other CPU | errors |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, h in h2h.items():
            lines.append(f"| {name} | {describe(h['config'])} | {h['throughput_rps']:.0f} ({h['throughput_range'][0]:.0f}-{h['throughput_range'][1]:.0f}) | "
                         f"{h['p50_ms']:.1f} | {num(h['p99_ms'], '.1f')} | {num(h['server_cpu_us_per_request'])} | "
                         f"{num(h['client_cpu_us_per_request'])} | {num(h['capacity_rps'])} | {num(h['avg_batch_size'], '.1f')} | {h['other_processes_cpu_cores']:.2f} | {h['errors']} |")
    lines += ["", f"Targets at c={top}:", ""]
    for label, t in results["targets"].items():
        proj = t["capacity_with_host_to_itself"]
        lines.append(f"- {label} ({t['source']}; {t['case']}): TorchServe {t['throughput_rps']:.0f} req/s, p99 {num(t['p99_ms'], '.1f')} ms; "
                     f"naive {t['naive_throughput_rps']:.0f} req/s, p99 {num(t['naive_p99_ms'], '.1f')} ms; /ping {t['ping_rps']:.0f} req/s. "
                     + "; ".join(f"{name.replace('_', ' ')} {t[name]['ratio']}x ({'met' if t[name]['met'] else 'MISSED'}: target {t[name]['target']}, {t[name]['margin']})"
                                 for name in ("throughput_vs_naive", "p99_vs_naive", "throughput_vs_ping"))
                     + f". CPU per request (server+client, us): TorchServe {sum(t['cpu_us_per_request']['torchserve'].values()):.0f}, "
                     f"naive {sum(t['cpu_us_per_request']['naive'].values()):.0f}, /ping {sum(t['cpu_us_per_request']['ping'].values()):.0f}; "
                     f"capacity with the {psutil.cpu_count()}-core host to itself: TorchServe {proj['torchserve_rps']}, naive {proj['naive_rps']}, "
                     f"/ping {proj['ping_rps']} req/s (vs naive {proj['torchserve_vs_naive']}x, vs /ping {proj['torchserve_vs_ping']}x). "
                     f"Gap to ceilings: {t['vs_encode_plus_forward_ceiling_b64']['ratio']}x of encode+forward per core, "
                     f"{t['vs_worker_in_process_ceiling']['ratio']}x of the worker's in-process path per core, "
                     f"{t['vs_forward_only_ceiling_b64']['ratio']}x of the forward pass alone")
    ceilings = results["ceilings"]["batches"]
    lines += ["", "In-process ceilings, the archive's code, texts per CPU-second (one thread unless stated):", "",
              "| batch | encode (text.py) | TorchScript fwd | eager fwd | ONNX Runtime fwd | TorchScript fwd, 2 threads | encode + TorchScript |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for b, e in ceilings.items():
        cells = [num(e[name]["texts_per_cpu_s"]) if name in e else "n/a" for name in ("encode", "torchscript", "eager", "onnxruntime")]
        two = e.get("torchscript_2_threads")
        cells.append(f"{num(two['texts_per_cpu_s'])} ({num(two['texts_per_wall_s'])}/s wall)" if two else "n/a")
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {num(e['torchscript']['encode_plus_forward_texts_per_cpu_s'])} |")
    lines += ["", f"Parity with the archive's TorchScript core: {results['ceilings']['parity']}"]
    steps = results["ceilings"].get("encode_steps_us_per_text")
    if steps:
        lines += ["", "Encode, CPU us per text of the mix: " + ", ".join(f"{k} {v}" for k, v in steps.items())]
    b = results["breakdown"]
    lines += ["", f"One request (w1b1, c=1): client latency {b['client_latency_ms_mean']} ms mean, TorchServe's own clock "
              f"{b['frontend_clock_ms_mean']} ms, the worker's Python path {b['worker_python_cpu_ms']} ms CPU (in-process). Shares of the "
              "client's latency: " + "; ".join(f"{k.strip()} {v:.0%}" for k, v in b.get("shares_of_client_latency", {}).items()),
              "", "CPU ms per request at c=1 (costs, not latency shares; the JVM also handles the worker's log lines): "
              + ", ".join(f"{k} {v}" for k, v in b["cpu_ms_per_request_at_1_client"].items())]
    cpu = b["cpu_us_per_request_at_top_concurrency"]
    lines += ["", f"CPU us per request at c={top} (median over points): " + "; ".join(
        f"{case} " + "/".join(f"{k} {v:.0f}" for k, v in parts.items()) for case, parts in cpu.items())]
    nd, nn = at(points, "naive_nodelay_off", 1), at(points, "naive", 1)
    if nd and nn:
        lines += ["", f"TCP_NODELAY check (naive, c=1): off: p50 {nd['latency_ms']['p50']} ms, {nd['throughput_rps']:.0f} req/s; "
                  f"on (asyncio's default, kept): p50 {nn['latency_ms']['p50']} ms, {nn['throughput_rps']:.0f} req/s"]
    rec = results["recommended_defaults"]
    lines += ["", "Recommended model-config.yaml: " + ", ".join(f"{k}: {v}" for k, v in rec["model_config_yaml"].items())
              + f" (grid choice {results['choice']['recommended_case']}; highest capacity {results['choice']['highest_capacity_case']}, "
              f"highest req/s {results['choice']['fastest_case']})"]
    for name, v in rec["frontend_variants"].items():
        lines += [f"Frontend variant {name} ({describe({k: x for k, x in v['config'].items() if 'netty' in k})}): "
                  f"{v['throughput_rps']:.0f} req/s, server CPU {num(v['server_cpu_us_per_request'])} us/req vs {v['control_throughput_rps']:.0f} req/s, "
                  f"{num(v['control_server_cpu_us_per_request'])} us/req for a fresh JVM with config.properties: {v['verdict']}"]
    other = [p["cpu_cores"]["other_processes"] for p in points]
    lines += ["", f"Background CPU from other processes during the points: mean {statistics.mean(other):.2f}, max {max(other):.2f} "
              f"of {psutil.cpu_count()} cores; load average {results['machine']['load_average_at_start']} at start, "
              f"{results['machine'].get('load_average_at_end')} at end. Total run {results['run_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"

