"""throughput_latency.png. Top row: the head-to-head, requests/s against the client count for each
body (one line per server). Middle row: its p99 latency on the mix, and server CPU per request and
RSS of each server's process tree at the top client count. Bottom row: the TorchServe grid."""

from pathlib import Path

import psutil

from common import CONCURRENCY
from grid import GRID_DELAY_MS

STYLE = {"torchserve": dict(color="tab:red", lw=2.5, marker="D"), "torchserve-ping": dict(color="grey", lw=2, ls=":", marker="^"),
         "fastapi-1worker": dict(color="black", lw=2, marker="s"), "litserve": dict(color="tab:purple", lw=2, marker="o")}
DEFAULT_STYLE = dict(color="tab:blue", lw=2, marker="v")  # fastapi-Nworkers


def clients_axis(ax, title: str, unit: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results.get("head_to_head", [])
    servers = list(dict.fromkeys(r["server"] for r in rows))
    bodies = list(dict.fromkeys(r["body"] for r in rows))
    fig, axes = plt.subplots(3, 3, figsize=(18, 15))
    top = CONCURRENCY[-1]

    def line(ax, server: str, body: str, key: str) -> None:
        mine = sorted((r for r in rows if r["server"] == server and r["body"] == body), key=lambda r: r["concurrency"])
        if mine:
            ax.plot([r["concurrency"] for r in mine], [r[key] for r in mine], label=server, **STYLE.get(server, DEFAULT_STYLE))

    for ax, body in zip(axes[0], bodies):
        for server in servers:
            line(ax, server, body, "req_per_s")
        clients_axis(ax, f"Head-to-head throughput, {body} bodies", "requests/s")
    axes[0][0].legend(fontsize=8)
    for server in servers:
        if server != "torchserve-ping":
            line(axes[1][0], server, "mix", "p99_ms")
    clients_axis(axes[1][0], "Head-to-head p99 latency, mix", "ms")
    axes[1][0].legend(fontsize=8)
    bar_axes = ((axes[1][1], "cpu_us_per_req", f"server CPU per request at {top} clients (us)"),
                (axes[1][2], "rss_mb", f"RSS of the server's process tree at {top} clients (MB)"))
    width = 0.8 / max(1, len(bodies))
    for ax, key, title in bar_axes:
        for i, body in enumerate(bodies):
            values = [next((r[key] or 0 for r in rows if r["server"] == s and r["body"] == body and r["concurrency"] == top), 0)
                      for s in servers]
            ax.bar([x + i * width for x in range(len(servers))], values, width, label=body)
        ax.set_xticks([x + width * (len(bodies) - 1) / 2 for x in range(len(servers))], servers, rotation=15, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)

    grid = [p for p in results["points"] if p.get("grid") or p.get("sweep")]
    for case in dict.fromkeys(p["case"] for p in grid):
        mine = sorted((p for p in grid if p["case"] == case), key=lambda p: p["concurrency"])
        style = dict(marker="x", lw=1, ls="--") if mine[0].get("sweep") else dict(marker="o", lw=1.3)
        xs = [p["concurrency"] for p in mine]
        axes[2][0].plot(xs, [p["throughput_rps"] for p in mine], label=case, **style)
        axes[2][1].plot(xs, [p["latency_ms"]["p99"] for p in mine], label=case, **style)
    clients_axis(axes[2][0], "TorchServe grid throughput (mix)", "requests/s")
    clients_axis(axes[2][1], "TorchServe grid p99 latency (mix)", "ms")
    axes[2][0].legend(fontsize=7, ncol=2)
    axes[2][2].axis("off")
    axes[2][2].text(0, 0.9, f"wXbY: X workers, batch size Y, {GRID_DELAY_MS} ms max batch delay\nwXbYdZ: the same with a Z ms delay\n\n"
                    "torchserve: as shipped (model-config.yaml)\ntorchserve-ping: its /ping, the same bodies POSTed\n"
                    "fastapi-Nworkers: uvicorn --workers N, TCP_NODELAY\nlitserve: dynamic batching, TorchServe's batch size and delay",
                    va="top", fontsize=10, family="monospace")
    fig.suptitle(f"sentiment v{results['config']['model_version']} on {psutil.cpu_count()} CPU cores shared by servers and client "
                 "(loopback, closed-loop aiohttp clients)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
