"""TorchServe's own per-request costs (a `make bench` job): the shipped server against variants that
each undo or add one setting, on short and long bodies at 32 clients (and one client for the shipped
one), so that each setting's worth is measured in the same run, on the same machine.

  shipped             config.properties + log4j2.xml, as `make serve` runs it
  default-logging     TorchServe's own log4j2 (frontend at DEBUG, logged twice; an access-log line a
                      request; metric log files): what log4j2.xml saves
  system-metrics-off  + disable_system_metrics=true (the frontend forks a collector every minute)
  jvm-small-heap      + vmargs -Xmx1g -XX:+UseParallelGC (TorchServe sets no heap cap: the JVM takes
                      a quarter of RAM and grew ~2x over the soak)
  netty-threads-2     + number_of_netty_threads=2, netty_client_threads=2 (one a core; default: cores)

The answer TorchServe writes (compact JSON bytes from the handler instead of json.dumps(indent=2)) and
per-batch metrics are in the shipped handler; they are compared with earlier runs' results files.
"""

from pathlib import Path

from common import CONCURRENCY, MODEL, log
from measure import Bench
from servers import Server, prewarm, ts_groups
from sentiment.ops.torchserve import LocalTorchServe

BODIES = ("short", "long")
VARIANTS = {
    "shipped": ({}, True),
    "default-logging": ({}, False),
    "system-metrics-off": ({"disable_system_metrics": "true"}, True),
    "jvm-small-heap": ({"vmargs": "-Xmx1g -XX:+UseParallelGC"}, True),
    "netty-threads-2": ({"number_of_netty_threads": "2", "netty_client_threads": "2"}, True),
}
WARM_S = 8.0


def run(bench: Bench, store: Path) -> list[dict]:
    """Each variant on a fresh TorchServe: an unrecorded warm-up, then short and long at the top
    concurrency (the shipped one also at one client). Rows for results["tuning"]."""
    rows = []
    for name, (config, quiet_logs) in VARIANTS.items():
        ts = LocalTorchServe(store, models=f"{MODEL}.mar", config=config, **({} if quiet_logs else {"log_config": None}))
        with ts:
            prewarm(ts)
            url = f"{ts.inference}/predictions/{MODEL}"
            bench.burst(url, CONCURRENCY[-1], WARM_S)
            server = Server(f"tuning {name}", ts.inference, ts_groups(ts), {"variant": name, **config}, ts)
            for body in BODIES:
                for c in ((1, CONCURRENCY[-1]) if name == "shipped" else (CONCURRENCY[-1],)):
                    point = bench.point(f"tuning {name} {body}", url, c, server.config, server.groups, body=body, ts=ts, tuning=name)
                    rows.append({"variant": name, "body": body, "concurrency": c, "req_per_s": point["throughput_rps"],
                                 "p50_ms": point["latency_ms"]["p50"], "p99_ms": point["latency_ms"]["p99"],
                                 "cpu_us_per_req": point.get("server_cpu_us_per_request"), "rss_mb": point["memory"]["rss_mb"]})
        log(f"tuning: {name} done")
    return rows
