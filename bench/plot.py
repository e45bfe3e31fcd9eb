"""throughput_latency.png: throughput and p99 latency against the client count for every case,
and the head-to-head bars."""

from pathlib import Path

from common import CONCURRENCY


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in results["points"] if not p.get("h2h") and p["case"] != "naive_nodelay_off"]
    cases = list(dict.fromkeys(p["case"] for p in points))
    fig, (ax_thr, ax_p99, ax_h2h) = plt.subplots(1, 3, figsize=(18, 5.8), gridspec_kw={"width_ratios": [3, 3, 2]})
    for case in cases:
        rows = sorted((p for p in points if p["case"] == case), key=lambda p: p["concurrency"])
        style = {"naive": dict(color="black", lw=2.5, marker="s"), "ping": dict(color="grey", lw=2, ls=":", marker="^"),
                 "shipped": dict(color="tab:red", lw=2.5, marker="D")}.get(case, dict(marker="o", lw=1.3))
        if rows[0].get("sweep"):
            style = dict(marker="x", lw=1, ls="--")
        xs = [p["concurrency"] for p in rows]
        ax_thr.plot(xs, [p["throughput_rps"] for p in rows], label=case, **style)
        if case != "ping":
            ax_p99.plot(xs, [p["latency_ms"]["p99"] for p in rows], label=case, **style)
    for ax, title, unit in ((ax_thr, "Throughput", "requests/s"), (ax_p99, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_thr.legend(fontsize=7, ncol=2)
    h2h = results.get("head_to_head", {})
    if h2h:
        names = list(h2h)
        medians = [h2h[n]["throughput_rps"] for n in names]
        lows = [m - h2h[n]["throughput_range"][0] for n, m in zip(names, medians)]
        highs = [h2h[n]["throughput_range"][1] - m for n, m in zip(names, medians)]
        colors = ["black", "tab:blue", "grey", "tab:cyan", "tab:purple", "tab:olive"]
        bars = ax_h2h.bar(names, medians, yerr=[lows, highs], capsize=4, color=[colors[i % len(colors)] for i in range(len(names))])
        for bar, n, high in zip(bars, names, highs):
            p99 = h2h[n]["p99_ms"]
            ax_h2h.annotate(f"{bar.get_height():.0f}/s\np99 {p99:.0f} ms" if p99 else "", (bar.get_x() + bar.get_width() / 2, bar.get_height() + high),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax_h2h.set_yscale("log")
        ax_h2h.set_ylim(top=max(medians) * 4)
        ax_h2h.set_title(f"Head-to-head at {CONCURRENCY[-1]} clients (median, min-max of {h2h[names[0]]['rounds']} rounds)", fontsize=9)
        ax_h2h.set_ylabel("requests/s (log)")
        ax_h2h.tick_params(axis="x", labelsize=8, rotation=15)
    fig.suptitle("sentiment on 2 shared CPU cores: naive FastAPI vs TorchServe "
                 "(wXbY = X workers, batch size Y, 5 ms max batch delay; dZ = Z ms delay)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

