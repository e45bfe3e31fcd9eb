"""Is the served model still seeing what it was tested on? Per model version, the live distributions
over a window (from Prometheus' HTTP API) against the reference in its signature, with a verdict,
and a PNG of live vs reference distributions.

    python -m sentiment.ops.drift_report                                   # Prometheus of `make monitor`, last 30m
    python -m sentiment.ops.drift_report --prometheus http://prometheus:9090 --window 2h --png build/drift-report.png

The statistics are sentiment/serving/drift.py's, the same ones the rules in deploy/prometheus/ compute in PromQL:
the positive rate against the test split's, the population stability index (PSI) of the
predicted probabilities and of the input lengths over their served bins (drift.HISTOGRAMS), and the
accuracy estimated from the calibrated probabilities (mean of max(p, 1 - p)) against the test
split's estimate. Counts are increase() over the window, so a TorchServe restart (counters back to
0) does not distort them.

Exit status: 0 no drift (or too little traffic for a verdict), 1 drift (a warning or critical
statistic), 2 no report: Prometheus unreachable or not installed, its API refused a query, or no
TorchServe target is up and there is no traffic to judge.
"""

import argparse
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

from sentiment.ops.prometheus import DEFAULT_PROMETHEUS, NoReport, query
from sentiment.serving import drift
from sentiment.serving.signature import Signature

ROOT = Path(__file__).resolve().parents[2]
BY = "ModelName, ModelVersion"


def by_version(result: list[dict], key: str | None = None) -> dict:
    """{(model, version): value} or, with `key`, {(model, version): {label value: value}}."""
    found = {}
    for sample in result:
        metric, value = sample["metric"], float(sample["value"][1])
        version = (metric.get("ModelName", ""), metric.get("ModelVersion", ""))
        if key is None:
            found[version] = value
        else:
            found.setdefault(version, {})[metric.get(key, "")] = value
    return found


def bins(served: dict[str, float], le: tuple[float, ...]) -> list[float]:
    """Bin counts in the order of `le`, from the served counts keyed by their `le` label (a bin never hit has none)."""
    by_bound = {drift.parse_le(label): count for label, count in served.items()}
    return [by_bound.get(bound, 0.0) for bound in le]


def collect(prometheus: str, window: str, at: float | None = None) -> dict:
    """Live counts per (model, version) over `window` ending `at` (now), and the scrape status."""
    def q(expr):
        return query(prometheus, expr, at)

    live = {}
    predictions = by_version(q(f"sum by ({BY}, Label) (increase(SentimentPredictions[{window}]))"), "Label")
    errors = by_version(q(f"sum by ({BY}, Kind) (increase(SentimentRequestErrors[{window}]))"), "Kind")
    expected_correct = by_version(q(f"sum by ({BY}) (increase(SentimentExpectedCorrect[{window}]))"))
    histograms = {key: by_version(q(f"sum by ({BY}, le) (increase({metric}[{window}]))"), "le")
                  for key, (metric, _) in drift.HISTOGRAMS.items()}
    sums = {key: by_version(q(f"sum by ({BY}) (increase({metric}[{window}]))")) for key, metric in drift.SUMS.items()}
    for version in set(predictions) | set(errors) | set().union(*histograms.values()):
        labels = predictions.get(version, {})
        entry = {"predictions": sum(labels.values()), "by_label": labels, "errors": errors.get(version, {}),
                 "expected_correct": expected_correct.get(version)}
        for key, (_, le) in drift.HISTOGRAMS.items():
            entry[key] = bins(histograms[key].get(version, {}), le)
            entry[f"{key}_sum"] = sums[key].get(version, 0.0)
        live[version] = entry
    latency = {s["metric"].get("model_name", ""): float(s["value"][1]) for s in q(
        f"sum by (model_name) (rate(ts_inference_latency_microseconds[{window}]))"
        f" / sum by (model_name) (rate(ts_inference_requests_total[{window}])) / 1000")}
    up = [float(s["value"][1]) for s in q('up{job="torchserve"}')]
    return {"live": live, "latency_ms": latency, "targets": len(up), "targets_up": int(sum(up))}


def alerts(prometheus: str) -> list[dict]:
    try:
        response = requests.get(prometheus.rstrip("/") + "/api/v1/alerts", timeout=10)
        return response.json()["data"]["alerts"]
    except (requests.RequestException, ValueError, KeyError):
        return []


def load_references(exports: list[Path]) -> dict:
    references = {}
    for folder in exports:
        signature = Signature.load(folder)
        if signature.reference:
            references[(signature.model_name, signature.version)] = (signature, folder)
    return references


def assess(collected: dict, references: dict, positive: str = "positive") -> list[dict]:
    """One row per live version: drift.compare of its counts with its reference (or none)."""
    rows = []
    for (model, version), entry in sorted(collected["live"].items(), key=lambda item: item[0]):
        live = {"predictions": entry["predictions"], "positive": entry["by_label"].get(positive, 0.0),
                "expected_correct": entry["expected_correct"], **{key: entry[key] for key in drift.HISTOGRAMS}}
        row = {"model": model, "version": version, "entry": entry}
        if (model, version) in references:
            signature, folder = references[(model, version)]
            row["reference"] = signature.reference
            row["stats"] = drift.compare(live, signature.reference)
        rows.append(row)
    return rows


def fmt(value: float, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def print_report(prometheus: str, window: str, at: float, collected: dict, rows: list[dict], firing: list[dict]) -> None:
    when = datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    print(f"Prometheus {prometheus}, window {window} ending {when}; torchserve targets up: "
          f"{collected['targets_up']}/{collected['targets']}")
    for model, latency in sorted(collected["latency_ms"].items()):
        if not math.isnan(latency):
            print(f"  {model}: mean inference latency {latency:.1f} ms")
    if not rows:
        print(f"No predictions in the last {window}: nothing to compare.")
    for row in rows:
        entry = row["entry"]
        errors = ", ".join(f"{kind} {count:.0f}" for kind, count in sorted(entry["errors"].items()) if count >= 0.5)
        print(f"\n{row['model']} v{row['version']}: {entry['predictions']:.0f} predictions"
              + (f"; refused or failed: {errors}" if errors else ""))
        if "stats" not in row:
            print("  no reference distribution for this version (no signature with one under --export): "
                  "re-export it, then `make monitor` so the alerts cover it too")
            continue
        stats, reference = row["stats"], row["reference"]
        n = entry["predictions"] or math.nan
        lines = [
            ("positive rate", fmt(stats["positive_rate"]), fmt(reference["positive_rate"]),
             f"|diff| > {drift.POSITIVE_RATE_TOLERANCE}", stats["positive_rate_level"]),
            ("probability PSI", fmt(stats["probability_psi"]), "0", f"> {drift.PSI_WARNING} / {drift.PSI_CRITICAL}", stats["probability_level"]),
            ("input length PSI", fmt(stats["input_kchars_psi"]), "0", f"> {drift.PSI_WARNING} / {drift.PSI_CRITICAL}", stats["input_kchars_level"]),
        ]
        if "estimated_accuracy" in stats:
            lines.append(("estimated accuracy", fmt(stats["estimated_accuracy"]), fmt(stats["reference_estimated_accuracy"]),
                          f"< ref - {stats['estimated_accuracy_margin']:.3f}", stats["estimated_accuracy_level"]))
        lines += [
            ("mean probability", fmt(entry["probability_sum"] / n), fmt(reference["mean_probability"]), "", ""),
            ("mean input characters", fmt(1000 * entry["input_kchars_sum"] / n, 0), fmt(1000 * reference["mean_kchars"], 0), "", ""),
        ]
        print(f"  {'statistic':<24}{'live':>10}{'reference':>11}  {'alert when':<18}level")
        for name, live, ref, threshold, level in lines:
            print(f"  {name:<24}{live:>10}{ref:>11}  {threshold:<18}{level}")
        verdict = stats["verdict"]
        explanation = {
            "ok": "no drift",
            "insufficient data": f"too little traffic for a verdict (< {drift.MIN_COUNT} predictions in {window})",
            "warning": "DRIFT (warning): look at the traffic; evaluate on fresh labels (make evaluate DATA=...)",
            "critical": "DRIFT (critical): evaluate on fresh labels now (make evaluate DATA=...); retrain if accuracy fell",
        }[verdict]
        print(f"  verdict: {explanation}")
    active = [a for a in firing if a.get("labels", {}).get("alertname", "").startswith(("Sentiment", "TorchServe"))]
    if active:
        print("\nalerts:")
        for alert in active:
            labels = alert["labels"]
            version = f" v{labels['ModelVersion']}" if "ModelVersion" in labels else ""
            print(f"  {alert['state']:<8} {labels['alertname']}{version} ({labels.get('severity', '')}): "
                  f"{alert.get('annotations', {}).get('summary', '')}")


def plot(rows: list[dict], path: Path, window: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in rows if "stats" in row]
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 2, figsize=(13, 3.6 * len(rows)), squeeze=False)
    for (ax_p, ax_l), row in zip(axes, rows):
        for ax, key, title in ((ax_p, "probability", "predicted probability"), (ax_l, "input_kchars", "input length (characters)")):
            reference = row["reference"][key]
            live = row["entry"][key]
            ref_total, live_total = sum(reference["counts"]), sum(live) or 1.0
            labels = bin_labels(reference["le"], scale=1000 if key == "input_kchars" else 1)
            x = range(len(labels))
            ax.bar([i - 0.2 for i in x], [c / ref_total for c in reference["counts"]], width=0.4, label="reference (test split)", color="#9aa5b1")
            ax.bar([i + 0.2 for i in x], [c / live_total for c in live], width=0.4, label=f"live ({window})", color="#d9534f")
            ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=7)
            ax.set_ylabel("share")
            psi = row["stats"][f"{key}_psi"]
            ax.set_title(f"{row['model']} v{row['version']}: {title}, PSI {fmt(psi)} ({row['stats'][key + '_level']})", fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle(f"Live vs reference, window {window}: verdict " + ", ".join(f"v{r['version']} {r['stats']['verdict']}" for r in rows))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bin_labels(le: list[str], scale: float = 1) -> list[str]:
    bounds = [drift.parse_le(label) * scale for label in le]
    out, low = [], 0.0
    for high in bounds:
        out.append(f">{low:g}" if math.isinf(high) else f"{low:g}-{high:g}")
        low = high
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default=DEFAULT_PROMETHEUS)
    parser.add_argument("--window", default="30m", help="PromQL duration the live statistics cover (the rules use 30m)")
    parser.add_argument("--export", type=Path, action="append", help="export folder(s) with the reference (default: build/v*/export)")
    parser.add_argument("--png", type=Path, default=ROOT / "build" / "drift-report.png")
    parser.add_argument("--time", type=float, help="evaluate at this Unix time instead of now")
    args = parser.parse_args(argv)

    exports = args.export or sorted(p.parent for p in ROOT.glob("build/v*/export/signature.json"))
    at = args.time if args.time is not None else time.time()
    try:
        references = load_references(exports)
        collected = collect(args.prometheus, args.window, at)
        rows = assess(collected, references)
    except NoReport as error:
        print(f"drift report: {error}", file=sys.stderr)
        return 2
    print_report(args.prometheus, args.window, at, collected, rows, alerts(args.prometheus))
    if not rows and not collected["targets_up"]:
        print("drift report: no torchserve target is up and there is no traffic: nothing is being watched "
              "(`make serve`, and check the scrape config)", file=sys.stderr)
        return 2
    if not references:
        print("(no reference found: build/v*/export/signature.json with a reference, or --export)", file=sys.stderr)
    plot(rows, args.png, args.window)
    if any("stats" in row for row in rows):
        print(f"\nwrote {args.png}")
    drifted = any(row.get("stats", {}).get("verdict") in ("warning", "critical") for row in rows)
    return 1 if drifted else 0


if __name__ == "__main__":
    sys.exit(main())
