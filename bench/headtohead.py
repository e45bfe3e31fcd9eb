"""Head-to-head: TorchServe as shipped against honest peers, each in its own process tree and alone
on the machine while measured, with the same request bodies, the same client (bench/loadgen.py)
and the same scoring function (bench/model.py: the peers load the exported artifact through
batch_predict.load_core; TorchServe serves the archive built from it).

  torchserve         TorchServe with config.properties and the archive's model-config.yaml (`make serve`)
  torchserve-ping    the same server's /ping, POSTed the same bodies: its HTTP path without the model
  fastapi-Nworkers   FastAPI + `uvicorn --workers N`, N = cores, TCP_NODELAY set (fastapi_app.py)
  fastapi-1worker    the same with one worker: the naive baseline, one request at a time
  litserve           LitServe with dynamic batching: TorchServe's batch size and delay, one inference
                     process per core (litserve_app.py)

Bodies: short (26-word snippets), long (~1,000-character reviews of snippets), mix (the realistic
mix); 1, 8 and 32 clients. Each server gets the same unrecorded warm-up first (a fresh JVM spends
several times the CPU per request until its JIT has compiled the hot paths). Also measured once:
fastapi-Nworkers without the TCP_NODELAY protocol, on uvloop and on asyncio's loop (the Nagle /
delayed-ACK stall).
"""

from pathlib import Path

import psutil
import requests

from common import CONCURRENCY, MODEL, log
from measure import Bench
from servers import Server, fastapi, litserve, torchserve, ts_groups

BODY_KINDS = ("short", "long", "mix")
WARM_S = 8.0  # an unrecorded burst at the top client count, per server, before its points


def run(bench: Bench, results: dict, version: str, store: Path, artifact: Path, shipped: dict, threads: int,
        sample: list[str]) -> list[dict]:
    """Every server in turn: warm-up, its answers to `sample` (request bodies), then a point per body
    and client count. Returns the head_to_head rows; the points go to bench.points, the rest into `results`."""
    cores = psutil.cpu_count()
    batch_timeout_s = shipped.get("maxBatchDelay", 100) / 1000
    peers = [lambda: fastapi(artifact, 1, threads, bench.scratch),
             lambda: fastapi(artifact, cores, threads, bench.scratch),
             lambda: litserve(artifact, cores, threads, shipped.get("batchSize", 1), batch_timeout_s, bench.scratch)]
    rows, samples = [], {}
    for start in peers:
        with start() as server:
            samples[server.name] = measure_server(bench, server, version, rows, sample)
    with torchserve(store) as ts:
        (described,) = ts.admin.describe()
        config = {k: described[k] for k in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")}
        server = Server("torchserve", ts.inference, ts_groups(ts), config, ts)
        samples["torchserve"] = measure_server(bench, server, version, rows, sample)
        measure_server(bench, Server("torchserve-ping", ts.inference, ts_groups(ts), config, ts), version, rows, None, path="/ping")
    results["head_to_head_parity"] = parity(samples)
    results["tcp_nodelay_check"] = nagle_check(bench, artifact, cores, threads, rows)
    return rows


def measure_server(bench: Bench, server: Server, version: str, rows: list, sample: list[str] | None,
                   path: str = f"/predictions/{MODEL}") -> list[float] | None:
    """Warm-up and the probabilities it answers to `sample` (None: neither, /ping of a warm server),
    then every body x client count."""
    url = server.url + path
    if sample is not None:
        bench.burst(url, CONCURRENCY[-1], WARM_S)
        with requests.Session() as session:
            sample = [session.post(url, data=b.encode(), headers={"Content-Type": "application/json"}, timeout=30).json()["probability"]
                      for b in sample]
    for body in BODY_KINDS:
        for c in CONCURRENCY:
            point = bench.point(f"h2h {server.name} {body}", url, c, server.config, server.groups, body=body, ts=server.ts,
                                server=server.name, h2h=True)
            rows.append({"server": server.name, "model_version": version, "body": body, "concurrency": c,
                         "req_per_s": point["throughput_rps"], "p50_ms": point["latency_ms"]["p50"],
                         "p99_ms": point["latency_ms"]["p99"], "cpu_us_per_req": point.get("server_cpu_us_per_request"),
                         "rss_mb": point["memory"]["rss_mb"]})
    return sample


def parity(samples: dict) -> dict:
    """Each server's largest |difference| from TorchServe's probabilities on the same sample."""
    reference = samples["torchserve"]
    out = {name: max(abs(a - b) for a, b in zip(sample, reference)) for name, sample in samples.items() if name != "torchserve"}
    for name, diff in out.items():
        if diff > 1e-5:
            log(f"WARNING: {name} answers differ from TorchServe's by up to {diff}: not the same scoring function")
    return {"max_abs_diff_vs_torchserve": out, "sample_bodies": len(reference)}


def nagle_check(bench: Bench, artifact: Path, cores: int, threads: int, rows: list) -> dict:
    """One client, short bodies: `uvicorn --workers N` without the TCP_NODELAY protocol, on uvloop
    (uvicorn's choice where it is installed) and on asyncio's loop, against the peer as measured."""
    name = f"fastapi-{cores}workers"
    on = next(r for r in rows if r["server"] == name and r["body"] == "short" and r["concurrency"] == 1)
    check = {"server": name, "clients": 1, "body": "short",
             "with_nodelay_protocol": {"req_per_s": on["req_per_s"], "p50_ms": on["p50_ms"]}}
    for loop in ("auto", "asyncio"):
        with fastapi(artifact, cores, threads, bench.scratch, nodelay=False, loop=loop) as server:
            point = bench.point(f"{server.name} short", server.url + f"/predictions/{MODEL}", 1, server.config, server.groups,
                                body="short", server=server.name)
        check[f"without_it_loop_{loop}"] = {"req_per_s": point["throughput_rps"], "p50_ms": point["latency_ms"]["p50"]}
    return check
