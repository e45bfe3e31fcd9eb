"""`make promote CANDIDATE=N`: README's loop (watch -> evaluate on fresh labels -> retrain -> canary ->
promote or roll back) from the canary on, with no step left to a person.

    python promote.py --candidate 3 --fresh fresh.csv          # make promote CANDIDATE=3 FRESH=fresh.csv
    python promote.py --candidate 3 --bake 60 --shadow recent-traffic.csv

1. Register model_store/sentiment_vN.mar beside the default version D with one worker, and regenerate
   and reload the rules of `make monitor`'s Prometheus (--prom-home: its rules and pid) so that they
   hold N's reference distribution.
2. Score N and D through the server on labels neither trained on: the held-out test split (train.split,
   fixed whatever data is added) and, with --fresh, the fresh labels that train.py holds out by a hash
   (evaluate.py --held-out). N must be more accurate on the fresh labels (without them: on the test
   split) and lose at most TEST_SPLIT_TOLERANCE on the test split; otherwise it is rolled back at once,
   as a failed acceptance test stops a Flagger canary before any traffic.
3. Bake: for --bake seconds (BAKE_SECONDS) replay recent traffic to N, a shadow stream that no client
   waits on (--shadow, else the fresh held-out texts, else the test split), while clients keep being
   answered by D. Then the analysis, in the style of Flagger / Argo Rollouts: each check a named PromQL
   query over the bake on the live Prometheus, a threshold and a comparison (`bake_checks`).
4. Promote (N scaled to D's worker count, then set-default N; D stays registered for a quick way back)
   or roll back (D stays or again becomes the default, N is unregistered); reload the rules for the
   versions now served; write the decision and all its evidence to build/promotions/<UTC time>-vN.json.

Why a 10-minute bake: it is the longest `for` of the health alerts (SentimentLatencyHigh,
SentimentBadInput), so the candidate is watched as long as the slowest of them needs to fire, and at
SHADOW_BATCH / SHADOW_INTERVAL (16 texts a second) it answers ~9,600 predictions: 24 times the 400 the
drift statistics need, and an error ratio resolved to 1e-4, ten times finer than its threshold. The
gate's traffic is its own shadow stream, so a broken candidate costs clients nothing; TorchServe has no
traffic split (a version gets all unversioned requests or none), and the clients' first requests on
N come with set-default, after every check passed.

Every check reads the bake alone, for N and for D alike: its PromQL ranges over the bake's seconds, with
the monitor's recorded references (reference.rules.yml) but not its 30 m statistics. The scoring requests
come just before the bake and must stay out of it: most of them are the test split, the references
themselves, and `increase()` misses a new series' first scrape, so a 30 m window holds D's scored texts
but hardly N's (with the drift rules' own PSIs a better candidate looked 0.48 more drifted than D).

A check without data fails: a candidate that answered nothing must not pass. The one exception is a
check whose recording rules are not loaded in Prometheus at all (the estimated accuracy's reference
exists only for versions exported with calibration): it is reported as "rule not loaded" and not
counted, and counts as soon as any served version has it.
Exit status: 0 promoted, 1 rolled back, 2 nothing done (a precondition failed; the record says which).
"""

import argparse
import csv
import json
import logging
import math
import operator
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import requests

import drift
import evaluate
from drift_report import query
from local_server import ROOT, TorchServeAdmin
from signature import MODEL_NAME

sys.path.insert(0, str(ROOT / "deploy" / "prometheus"))
import generate_rules  # noqa: E402

log = logging.getLogger("promote")

BAKE_SECONDS = 600  # why 10 minutes: the module docstring
SHADOW_BATCH, SHADOW_INTERVAL = 8, 0.5  # the bake's replayed traffic: 8 texts a request, a request every 0.5 s
MIN_PREDICTIONS = drift.MIN_COUNT  # 400: the fewest predictions the drift statistics give a verdict on
MAX_ERROR_RATIO = 0.001  # the SentimentInferenceErrors alert's threshold (deploy/prometheus/rules/health.rules.yml)
# N's probability PSI (against its test split) may exceed D's over the bake by less than twice a significant shift:
# a version retrained on new traffic is surer of it than of its test split (the better test candidate: +0.08 to
# +0.20 over v1), while one that piles its answers into one or two bins has a PSI of 4.4 to 10.7 (v1's reference).
PSI_MARGIN = 2 * drift.PSI_CRITICAL
# Accuracy N may lose on the fixed test split (10 of 1,066 texts): a retrain on added data changes few answers
# (the better test candidate: 9 texts answered otherwise than by v1, 3 fewer right: a paired standard error of
# sqrt(9) / 1,066 = 0.003), so losing more than a point is a regression, not noise.
TEST_SPLIT_TOLERANCE = 0.01
RULES_WINDOW, RULES_FOR = "30m", "10m"  # those of `make monitor`'s rules (generate_rules.py's defaults)
SCRAPE_TIMEOUT = 35  # s for a Prometheus just started to scrape TorchServe (every 15 s by default)
RELOAD_TIMEOUT = 90  # s for Prometheus to evaluate reloaded rules (every 15 s by default)
PROM_HOME = ROOT / "logs" / "prometheus"  # `make monitor`'s: rules/, prometheus.pid
RECORDS = ROOT / "build" / "promotions"
ESTIMATE_RULES = ("sentiment:reference_estimated_accuracy", "sentiment:reference_estimated_accuracy_margin")  # calibrated versions' only
COMPARISONS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
EXIT = {"promoted": 0, "rolled back": 1, "nothing done": 2}


@dataclass(frozen=True)
class Check:
    """One check of the analysis (a Flagger / Argo Rollouts metric): passes when `value comparison threshold`.
    `query` is PromQL, or for a score what was computed; `needs`: recording rules that may not be loaded yet."""

    name: str
    query: str
    comparison: str
    threshold: float
    why: str
    needs: tuple[str, ...] = ()


def judge(check: Check, value: float | None, loaded: set[str] = frozenset()) -> dict:
    """The check's outcome as the record keeps it: status pass, fail, no data (fails) or rule not loaded (not counted)."""
    if value is not None and math.isnan(value):
        value = None
    if value is not None:
        status = "pass" if COMPARISONS[check.comparison](value, check.threshold) else "fail"
    else:
        status = "rule not loaded" if set(check.needs) - set(loaded) else "no data"
    return {**asdict(check), "needs": list(check.needs), "value": value, "status": status}  # as the JSON record holds it


def passed(results: list[dict]) -> bool:
    return all(r["status"] == "pass" for r in results if r["status"] != "rule not loaded")


def psi_query(labels: str, window: str) -> str:
    """PromQL for the PSI of one version's predicted probabilities over `window` against its reference, as the
    drift rules compute theirs (bin counters by le, an empty bin counting 0, smoothed shares against
    sentiment:reference_probability_share), but over any window. `labels` select one version."""
    metric, bounds = drift.HISTOGRAMS["probability"]
    reference = f"sentiment:reference_probability_share{{{labels}}}"
    bins = f"sum by (le) (increase({metric}{{{labels}}}[{window}]) or on (le) 0 * {reference})"
    share = f"({bins} + {drift.SMOOTHING})\n  / on () group_left () (sum({bins}) + {drift.SMOOTHING * len(bounds)})"
    return f"sum(\n ({share}\n  - on (le) {reference})\n * ln({share}\n  / on (le) {reference})\n)"


def bake_checks(candidate: str, default: str, bake: float, latency_ms: float, model: str = MODEL_NAME) -> list[Check]:
    """The analysis: N's traffic, errors, latency, drift (against D's) and estimated accuracy, over the bake alone."""
    n, d, over = f'ModelName="{model}",ModelVersion="{candidate}"', f'ModelName="{model}",ModelVersion="{default}"', f"{bake:g}s"
    ts = f'model_name="{model}",model_version="{candidate}"'
    return [
        Check("traffic", f"sum(increase(SentimentPredictions{{{n}}}[{over}]))", ">=", MIN_PREDICTIONS,
              "predictions N answered in the bake: enough for the other checks to mean something (drift.MIN_COUNT)"),
        Check("inference_errors",
              f'(sum(increase(SentimentRequestErrors{{{n},Kind="inference_error"}}[{over}])) or vector(0))\n'
              f'/ sum(increase({{__name__=~"SentimentPredictions|SentimentRequestErrors",{n}}}[{over}]))',
              "<", MAX_ERROR_RATIO, "share of N's items that broke the model (HTTP 500), as the SentimentInferenceErrors alert"),
        Check("latency_mean_ms",
              f"sum(rate(ts_inference_latency_microseconds{{{ts}}}[{over}]))\n/ sum(rate(ts_inference_requests_total{{{ts}}}[{over}])) / 1000",
              "<", round(latency_ms, 3), "N's mean inference latency in the bake, under the SentimentLatencyHigh threshold it will serve under"),
        Check("probability_drift", f"{psi_query(n, over)}\n-\n{psi_query(d, over)}", "<", PSI_MARGIN,
              "PSI of N's predictions in the bake against its test split's, less D's against D's on the same minutes' traffic: "
              "a retrained N may see drifted traffic, but must not read it far worse than D (the drift rules' PSI, over the bake)"),
        Check("estimated_accuracy",
              f"(sum(increase(SentimentExpectedCorrect{{{n}}}[{over}])) / sum(increase(SentimentPredictions{{{n}}}[{over}]))\n"
              f" - on () sentiment:reference_estimated_accuracy{{{n}}})\n/ on () sentiment:reference_estimated_accuracy_margin{{{n}}}",
              ">=", -1, "N's estimated accuracy in the bake (sentiment:estimated_accuracy's definition: mean calibrated confidence) "
              "less its test split's, in margins of the SentimentEstimatedAccuracyDrop alert: that alert's condition", needs=ESTIMATE_RULES),
    ]


def score_checks(scores: dict) -> list[dict]:
    """N against D on each labelled set, from the number each answered right on the same texts."""
    def gain(name: str) -> float:
        s = scores[name]
        return round((s["candidate"]["correct"] - s["default"]["correct"]) / s["candidate"]["size"], 4)

    def computed(name: str) -> str:
        return f"(correct(N) - correct(D)) / {scores[name]['candidate']['size']} on {name}, through the server"

    if "fresh_held_out" not in scores:
        return [judge(Check("test_split_accuracy_gain", computed("test_split"), ">", 0,
                            "no fresh labels: N must be more accurate on the held-out test split"), gain("test_split"))]
    return [judge(Check("fresh_held_out_accuracy_gain", computed("fresh_held_out"), ">", 0,
                        "N must be more accurate on the fresh labels neither version trained on"), gain("fresh_held_out")),
            judge(Check("test_split_accuracy_change", computed("test_split"), ">=", -TEST_SPLIT_TOLERANCE,
                        "N may lose at most TEST_SPLIT_TOLERANCE on the fixed test split"), gain("test_split"))]


def read_texts(path: Path, column: str = "text") -> list[str]:
    """The `text` column of a CSV (with a header) or JSONL file: recent traffic, no labels needed."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f)) if path.suffix.lower() == ".csv" else [json.loads(line) for line in f if line.strip()]
    return [row[column] for row in rows]


class Shadow(threading.Thread):
    """Replays `texts` to one URL, `batch` texts a request every `interval` s until stopped, counting answers by status."""

    def __init__(self, url: str, texts: list[str], batch: int, interval: float):
        super().__init__(daemon=True)
        self.url, self.texts, self.batch, self.interval = url, texts, batch, interval
        self.stopping = threading.Event()
        self.statuses: Counter = Counter()
        self.sent = 0

    def run(self) -> None:
        with requests.Session() as session:
            while not self.stopping.is_set():
                chunk = [self.texts[(self.sent + i) % len(self.texts)] for i in range(self.batch)]
                self.sent += self.batch
                try:
                    self.statuses[str(session.post(self.url, json={"texts": chunk}, timeout=30).status_code)] += 1
                except requests.RequestException as error:
                    self.statuses[type(error).__name__] += 1
                self.stopping.wait(self.interval)

    def stop(self) -> dict:
        self.stopping.set()
        self.join(timeout=60)
        return {"url": self.url, "texts_sent": self.sent, "requests_by_status": dict(self.statuses)}


class Precondition(Exception):
    """Something the gate needs before it changes anything is missing."""


class Promotion:
    """One run of the gate; `run()` returns "promoted", "rolled back" or "nothing done", and `record` holds why."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.n = args, args.candidate
        self.admin = TorchServeAdmin(args.management)
        self.archive = args.model_store / f"{MODEL_NAME}_v{self.n}.mar"
        self.started = time.time()
        self.record = {
            "candidate": self.n, "archive": str(self.archive), "started": stamp(self.started, "%Y-%m-%dT%H:%M:%SZ"),
            "server": {"inference": args.inference, "management": args.management, "metrics": args.metrics},
            "prometheus": args.prometheus,
            "settings": {"bake_s": args.bake, "shadow_batch": args.shadow_batch, "shadow_interval_s": args.shadow_interval,
                         "rules_window": args.rules_window, "fresh": [str(p) for p in args.fresh]},
            "actions": [],
        }

    def act(self, action: str, **details) -> None:
        self.record["actions"].append({"at_s": round(time.time() - self.started, 2), "action": action, **details})
        log.info("%s %s", action, " ".join(f"{k}={v}" for k, v in details.items()))

    def run(self) -> str:
        try:
            self.preflight()
        except Exception as error:  # nothing has changed yet
            return self.finish("nothing done", error=str(error) if isinstance(error, Precondition) else f"{type(error).__name__}: {error}")
        accepted, error = False, None
        try:
            self.admin.register(self.archive.name)
            self.admin.scale(1, version=self.n)
            self.act("registered", version=self.n, workers=1)
            self.reload_rules(candidate_served=True)
            accepted = self.score() and self.bake()
            if accepted:
                self.promote()
        except (Exception, KeyboardInterrupt) as failure:  # whatever broke, N must not stay half-deployed
            accepted, error = False, f"{type(failure).__name__}: {failure}"
            log.error("%s: rolling back", error)
        if not accepted:
            try:
                self.roll_back()
            except Exception as failure:  # the record's default_after and versions_after say where it stopped
                error = f"{error or 'rejected'}; roll back failed: {type(failure).__name__}: {failure}"
        try:
            self.reload_rules(candidate_served=accepted)
        except Exception as failure:  # the decision stands; the monitor's rules are stale until `make monitor`
            self.record["warning"] = f"rules not reloaded: {type(failure).__name__}: {failure}; run `make monitor`"
        return self.finish("promoted" if accepted else "rolled back", error=error)

    def preflight(self) -> None:
        """Everything the run needs, checked before anything changes."""
        args = self.args
        if not self.archive.exists():
            raise Precondition(f"{self.archive} does not exist: `make archive VERSION={self.n} STORE={args.model_store}` builds it")
        candidate = generate_rules.archived_signature(self.archive)
        if (candidate.model_name, candidate.version) != (MODEL_NAME, self.n):
            raise Precondition(f"{self.archive} holds {candidate.model_name} v{candidate.version}, not {MODEL_NAME} v{self.n}")
        try:
            served = {d["modelVersion"]: d for d in self.admin.describe(version="all")}
            self.d = self.admin.describe()[0]["modelVersion"]
        except requests.RequestException:
            raise Precondition(f"TorchServe does not answer at {args.management}: `make serve MODEL_API=on` first") from None
        if self.n in served:
            raise Precondition(f"v{self.n} is registered already (default v{self.d}): unregister it, then promote it")
        self.signatures = {"candidate": candidate,
                           "default": generate_rules.archived_signature(args.model_store / served[self.d]["modelUrl"])}
        self.default_workers = len(served[self.d]["workers"])
        instance = args.metrics.split("://")[-1].rstrip("/")
        deadline = time.monotonic() + SCRAPE_TIMEOUT  # `make promote` may have just started it (`make monitor`)
        while [s["value"][1] for s in query(args.prometheus, f'up{{job="torchserve",instance="{instance}"}}')] != ["1"]:
            if time.monotonic() > deadline:
                raise Precondition(f"Prometheus at {args.prometheus} does not scrape TorchServe's {instance}: `make monitor`")
            time.sleep(0.5)
        self.prometheus_pid()
        thresholds = generate_rules.latency_thresholds(generate_rules.measured_latencies(), self.d)
        measured = thresholds.get(self.n) or thresholds.get(self.d)
        if measured is None:
            raise Precondition(f"neither v{self.n} nor v{self.d} has `make bench` results: no latency threshold (`make bench VERSION={self.n}`)")
        self.latency = {"ms": measured["ms"], "from": f"v{measured['version']}: {generate_rules.LATENCY_MULTIPLE} x p50 "
                        f"{measured['p50_ms']} ms, {measured['source']}"}
        self.labelled = {"test_split": evaluate.held_out_test_split()}
        if args.fresh:
            texts, labels = [], []
            for path in args.fresh:
                more = evaluate.load_labelled(path, candidate.labels)
                texts, labels = texts + more[0], labels + more[1]
            self.labelled["fresh_held_out"] = evaluate.held_out_rows(texts, labels)
        self.shadow_texts = (read_texts(args.shadow) if args.shadow else
                             self.labelled.get("fresh_held_out", self.labelled["test_split"])[0])
        self.record.update(default_before=self.d, default_workers=self.default_workers, latency_threshold=self.latency,
                           candidate_training_metrics={k: candidate.metrics.get(k) for k in ("test", "fresh", "fresh_test")},
                           shadow_source=str(args.shadow) if args.shadow else "fresh held-out texts" if args.fresh else "test split")

    def prometheus_pid(self) -> int:
        """The pid of `make monitor`'s Prometheus, whose rules are reloaded by SIGHUP."""
        pid_file = self.args.prom_home / "prometheus.pid"
        try:
            pid = int(pid_file.read_text())
            if "prometheus" in psutil.Process(pid).name():
                return pid
        except (OSError, ValueError, psutil.Error):
            pass
        raise Precondition(f"no running Prometheus in {pid_file}: `make monitor` starts it (its rules must follow the served versions)")

    def reload_rules(self, candidate_served: bool) -> None:
        """`make monitor`'s rules regenerated from the versions served now, Prometheus reloaded, and waited
        for until it evaluates them (N's reference present or gone)."""
        args = self.args
        run = subprocess.run([sys.executable, str(Path(generate_rules.__file__)), "--server", args.management,
                              "--model-store", str(args.model_store), "--rules-out", str(args.prom_home / "rules"), "--tests-out", "",
                              "--window", args.rules_window, "--for", args.rules_for], capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            raise RuntimeError(f"generate_rules.py failed: {run.stderr[-1000:]}")
        psutil.Process(self.prometheus_pid()).send_signal(signal.SIGHUP)
        reference = f'sentiment:reference_positive_rate{{ModelName="{MODEL_NAME}",ModelVersion="{self.n}"}}'
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while bool(query(args.prometheus, reference)) != candidate_served:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus did not {'load' if candidate_served else 'drop'} v{self.n}'s rules in {RELOAD_TIMEOUT} s")
            time.sleep(0.5)
        self.act("rules reloaded", versions=sorted(d["modelVersion"] for d in self.admin.describe(version="all")))

    def score(self) -> bool:
        """Accuracy and AUC of N and D on each labelled set, through the server; the score checks."""
        scores = {}
        for name, (texts, labels) in self.labelled.items():
            scores[name] = {role: summary(evaluate.evaluate_served(texts, labels, self.signatures[role], self.args.inference,
                                                                   MODEL_NAME, version))
                            for role, version in (("candidate", self.n), ("default", self.d))}
        self.record["scores"] = scores
        self.record["score_checks"] = checks = score_checks(scores)
        self.act("scored", **{c["name"]: f"{c['value']} {c['status']}" for c in checks})
        return passed(checks)

    def bake(self) -> bool:
        """Shadow traffic to N for --bake seconds, then every check of the analysis on Prometheus."""
        args = self.args
        shadow = Shadow(f"{args.inference}/predictions/{MODEL_NAME}/{self.n}", self.shadow_texts, args.shadow_batch, args.shadow_interval)
        self.act("bake started", seconds=args.bake)
        shadow.start()
        try:
            time.sleep(args.bake)
        finally:
            self.record["shadow"] = shadow.stop()
        loaded = {rule["name"] for group in requests.get(args.prometheus + "/api/v1/rules", params={"type": "record"}, timeout=10)
                  .json()["data"]["groups"] for rule in group["rules"]}
        results = []
        for check in bake_checks(self.n, self.d, args.bake, self.latency["ms"]):
            values = query(args.prometheus, check.query)
            results.append(judge(check, float(values[0]["value"][1]) if len(values) == 1 else None, loaded))
        self.record["bake_checks"] = results
        self.act("baked", **{r["name"]: f"{r['value']} {r['status']}" for r in results})
        return passed(results)

    def promote(self) -> None:
        self.admin.scale(self.default_workers, version=self.n)  # before it takes the default's traffic
        self.admin.set_default(self.n)
        self.act("promoted", default=self.n, workers=self.default_workers)

    def roll_back(self) -> None:
        served = {d["modelVersion"] for d in self.admin.describe(version="all")}
        if self.admin.describe()[0]["modelVersion"] != self.d:
            self.admin.set_default(self.d)
        if self.n in served:
            self.admin.unregister(version=self.n)
        self.act("rolled back", default=self.d, unregistered=self.n in served)

    def finish(self, decision: str, error: str | None = None) -> str:
        try:
            served = {d["modelVersion"]: d for d in self.admin.describe(version="all")}
            after = {"default_after": self.admin.describe()[0]["modelVersion"], "versions_after": sorted(served)}
        except requests.RequestException as failure:
            after = {"default_after": None, "server_error": str(failure)}
        self.record.update(decision=decision, error=error, **after, seconds=round(time.time() - self.started, 1),
                           finished=stamp(time.time(), "%Y-%m-%dT%H:%M:%SZ"))
        self.args.records.mkdir(parents=True, exist_ok=True)
        path = self.args.records / f"{stamp(self.started, '%Y%m%dT%H%M%SZ')}-v{self.n}.json"
        path.write_text(json.dumps(self.record, indent=2) + "\n")
        self.record["path"] = str(path)
        log.info("%s v%s%s; evidence: %s", decision, self.n, f" ({error})" if error else "", path)
        return decision


def summary(result: dict) -> dict:
    return {k: result[k] for k in ("accuracy", "roc_auc", "size", "correct", "positive_rate", "served_versions", "seconds")}


def stamp(seconds: float, form: str) -> str:
    return time.strftime(form, time.gmtime(seconds))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", required=True, help="the version to promote: <model store>/sentiment_v<N>.mar")
    parser.add_argument("--fresh", type=Path, action="append", default=[], help="fresh labelled reviews (CSV/JSONL text,label) as "
                        "given to train.py --fresh; only the rows it holds out are scored. Repeatable")
    parser.add_argument("--shadow", type=Path, help="recent traffic to replay to the candidate in the bake (CSV/JSONL, a text "
                        "column; default: the fresh held-out texts, else the test split)")
    parser.add_argument("--bake", type=float, default=BAKE_SECONDS, help="seconds (default %(default)s)")
    parser.add_argument("--shadow-batch", type=int, default=SHADOW_BATCH)
    parser.add_argument("--shadow-interval", type=float, default=SHADOW_INTERVAL)
    parser.add_argument("--inference", default="http://127.0.0.1:8080")
    parser.add_argument("--management", default="http://127.0.0.1:8081")
    parser.add_argument("--metrics", default="http://127.0.0.1:8082", help="TorchServe's metrics address, as Prometheus scrapes it")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--prom-home", type=Path, default=PROM_HOME, help="`make monitor`'s folder: rules/ and prometheus.pid")
    parser.add_argument("--rules-window", default=RULES_WINDOW, help="the window of the monitor's drift rules")
    parser.add_argument("--rules-for", default=RULES_FOR, help="the `for` of the monitor's drift alerts")
    parser.add_argument("--records", type=Path, default=RECORDS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> tuple[str, dict]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    promotion = Promotion(parse(argv))
    return promotion.run(), promotion.record


if __name__ == "__main__":
    sys.exit(EXIT[main()[0]])
