"""`make promote CANDIDATE=N`: README's loop (watch -> evaluate on fresh labels -> retrain -> canary ->
promote or roll back) from the canary on, with no step left to a person.

    python -m sentiment.ops.promote --candidate 3 --fresh fresh.csv          # make promote CANDIDATE=3 FRESH=fresh.csv
    python -m sentiment.ops.promote --candidate 3 --bake 60 --shadow recent-requests.csv

0. Take the lock (--records/promote.lock: one gate at a time per records folder) and finish or undo what a
   killed run began, as its state file (--records/state.json) says: N unregistered unless it had become the
   default, whose promotion is then completed; the rules reloaded for what is served.
1. Register model_store/sentiment_vN.mar beside the default version D, scaled to one worker (the state
   file written first), and regenerate and reload the rules of `make monitor`'s Prometheus (--prom-home).
2. Score N and D through the server on labels neither trained on: the held-out test split (train.split)
   and, with --fresh, the fresh labels sentiment/training/nbsvm.py holds out by a hash. The score gate is a paired test on
   the texts one version answers right and the other wrong (exact McNemar, one-sided, ALPHA): N must be
   significantly better on the fresh labels (without them: on the test split) and not significantly
   worse on the test split; an equally good N keeps D. The p-values and the 95 % intervals of the
   accuracy difference go into the record.
3. Bake: for --bake seconds send each shadow text to N and to D alike (paired: no client waits on
   either answer), from a source independent of the references and of the scored texts (default: IMDB's
   test reviews, ../shared/data/imdb/; --shadow: an opt-in sample of recent requests). Then judge what the
   shadow clients got (every non-200 answer and timeout of N's, N's worker restarts), N against D on
   the same distinct texts (disagreement, shift of the answered probabilities, estimated accuracy,
   latency at the same load), and on Prometheus the handler's inference errors per request and
   TorchServe's latency over the bake.
4. Promote (N scaled to D's worker count, the default switched only if it is still D: compare and set;
   D kept registered on one worker for the way back) or roll back (N unregistered; the default restored
   only if this run had switched it). If someone else changed the default meanwhile, the gate stops and
   says so ("stopped", exit 3) rather than revert them. Reload the rules; write the decision and its
   evidence to build/promotions/<UTC time>-vN.json; remove the state file.

SIGTERM (and Ctrl-C) roll back like a failed check; after SIGKILL the next run does (step 0).

Why a 10-minute bake: it is the longest `for` of the health alerts (SentimentLatencyHigh,
SentimentBadInput), so the candidate is watched as long as the slowest of them needs to fire, and at
SHADOW_BATCH / SHADOW_INTERVAL (16 texts a second to each version) it answers ~9,600 distinct texts:
24 times the MIN_PREDICTIONS the comparisons need. The gate's traffic is its own shadow stream, so a
broken candidate costs clients nothing; TorchServe has no traffic split (a version gets all
unversioned requests or none), and the clients' first requests on N come with set-default.

What the gate cannot see: a change in what texts mean (concept drift) without new labels, and faults
on texts unlike the shadow stream's.
Exit status: 0 promoted, 1 rolled back, 2 nothing done (a precondition failed; the record says which),
3 stopped (someone else changed the default).
"""

import argparse
import csv
import fcntl
import gzip
import hashlib
import json
import logging
import math
import operator
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import requests
from scipy.stats import binomtest

from sentiment.serving import drift
from sentiment import data
from sentiment.ops import evaluate, rules
from sentiment.ops.prometheus import query
from sentiment.ops.torchserve import ROOT, TorchServeAdmin
from sentiment.serving.signature import MODEL_NAME

log = logging.getLogger("promote")

BAKE_SECONDS = 600  # why 10 minutes: the module docstring
SHADOW_BATCH, SHADOW_INTERVAL = 8, 0.5  # the bake's paired traffic: 8 texts a request to each version, every 0.5 s
SHADOW_SOURCE = ROOT.parent / "shared" / "data" / "imdb" / "imdb_test.jsonl.gz"  # never trained on, nor a reference
# s a shadow request may take: what a client gives up after (a stalled request counts as failed); above a healthy
# full batch's seconds and below the archive's responseTimeout (10 s), after which TorchServe restarts the worker.
SHADOW_TIMEOUT = 5
MIN_PREDICTIONS = drift.MIN_COUNT  # 400 distinct texts: the fewest the drift statistics give a verdict on
MAX_ERROR_RATIO = 0.001  # the SentimentInferenceErrors alert's threshold (deploy/prometheus/rules/health.rules.yml)
ALPHA = 0.05  # one-sided level of every statistical test of the gate: an equally good N is promoted 1 time in 20 at most
Z_ALPHA = statistics.NormalDist().inv_cdf(1 - ALPHA)
# The most N may answer otherwise than D on the same texts: a retrain on added data changes few answers (the
# better test candidate: ~2 %), a differently trained model many (the flipped one: ~90 %) that a few hundred
# labelled texts cannot vouch for.
MAX_DISAGREEMENT = 0.2
# The PSI of N's answered probabilities against D's on the same texts: under twice a significant shift (a version
# retrained on new traffic is surer of it; one that piles its answers into one or two bins reads 4 to 11).
PSI_MARGIN = 2 * drift.PSI_CRITICAL
# How much lower N's estimated accuracy may be than D's on the same texts: paired, its standard error is tiny (the
# better test candidate: 0.0004 lower, 2 standard errors), so "significantly lower" alone would refuse a negligible
# drop; the gate asks that the one-sided ALPHA lower bound of the difference stay above one point.
ESTIMATED_ACCURACY_MARGIN = 0.01
LATENCY_RATIO = rules.LATENCY_MULTIPLE  # N's mean shadow latency over D's, at the same load and texts
RETAINED_WORKERS = 1  # D's workers after a promotion: its versioned clients and the way back, without taking the cores
# TorchServe 0.12 scales down at once, failing a batch in flight on the removed worker ("Worker died.", #1101):
# D is scaled down this long after the switch, once the requests the old default route queued for it are answered.
DRAIN_SECONDS = 2.0
RULES_WINDOW, RULES_FOR = "30m", "10m"  # those of `make monitor`'s rules (sentiment/ops/rules.py's defaults)
SCRAPE_TIMEOUT = 35  # s for a Prometheus just started to scrape TorchServe (every 15 s by default)
RELOAD_TIMEOUT = 90  # s for Prometheus to evaluate reloaded rules (every 15 s by default)
PROM_HOME = ROOT / "logs" / "prometheus"  # `make monitor`'s: rules/, prometheus.pid
RECORDS = ROOT / "build" / "promotions"
COMPARISONS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
EXIT = {"promoted": 0, "rolled back": 1, "nothing done": 2, "stopped": 3}


@dataclass(frozen=True)
class Check:
    """One check of the analysis (a Flagger / Argo Rollouts metric): passes when `value comparison threshold`.
    `query` is PromQL, or for a computed check what was computed."""

    name: str
    query: str
    comparison: str
    threshold: float
    why: str


def judge(check: Check, value: float | None, **evidence) -> dict:
    """The check's outcome as the record keeps it: pass, fail, or no data (fails: a candidate that answered nothing must not pass)."""
    if value is not None and math.isnan(value):
        value = None
    status = "no data" if value is None else "pass" if COMPARISONS[check.comparison](value, check.threshold) else "fail"
    return {**asdict(check), "value": value, "status": status, **evidence}


def passed(results: list[dict]) -> bool:
    return all(r["status"] == "pass" for r in results)


def mcnemar(better: int, worse: int, alternative: str = "greater") -> dict:
    """Exact McNemar test on the discordant texts: `better` that N answers right and D wrong, `worse` the
    reverse. Without a difference each discordant text is N's with probability 1/2 (a binomial test);
    "greater": is N better, "less": is N worse. The interval is the exact (Clopper-Pearson) 95 % one of
    the share of discordant texts that are N's, 0.5 for no difference."""
    discordant = better + worse
    if not discordant:
        return {"better": 0, "worse": 0, "p_value": 1.0, "share_ci95": None}
    test = binomtest(better, discordant, 0.5, alternative=alternative)
    ci = binomtest(better, discordant, 0.5).proportion_ci(0.95, method="exact")
    return {"better": better, "worse": worse, "p_value": float(test.pvalue), "share_ci95": [float(ci.low), float(ci.high)]}


def paired_score(candidate: list[bool], default: list[bool], alternative: str = "greater") -> dict:
    """N against D on the same labelled texts (True: answered right): the accuracy difference with its exact
    95 % interval given the discordant count (difference = discordant / n * (2 * share - 1)), and McNemar's p."""
    n = len(candidate)
    test = mcnemar(sum(c and not d for c, d in zip(candidate, default)), sum(d and not c for c, d in zip(candidate, default)), alternative)
    share = (test["better"] + test["worse"]) / n
    return {"size": n, "accuracy_difference": round((test["better"] - test["worse"]) / n, 6), **test,
            "difference_ci95": [round(share * (2 * p - 1), 6) for p in test["share_ci95"]] if test["share_ci95"] else [0.0, 0.0]}


def score_checks(paired: dict) -> list[dict]:
    """The score gate from `paired_score`s: a significant gain where it is required, no significant loss on the test split."""
    def gain(name: str) -> dict:
        return judge(Check(f"{name}_gain", f"exact McNemar, one-sided (N better), on {name}'s discordant texts", "<", ALPHA,
                           "N must be more accurate than D, significantly: an equally good N keeps D (no significant gain)"),
                     paired[name]["p_value"], **paired[name])

    if "fresh_held_out" not in paired:
        return [gain("test_split")]
    return [gain("fresh_held_out"),
            judge(Check("test_split_loss", "exact McNemar, one-sided (N worse), on test_split's discordant texts", ">=", ALPHA,
                        "N must not be significantly less accurate than D on the fixed test split"),
                  paired["test_split_loss"]["p_value"], **paired["test_split_loss"])]


def read_texts(path: Path, column: str = "text") -> list[str]:
    """The `text` column of a CSV (with a header) or JSONL file, gzipped or not: recent traffic, no labels needed."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f)) if ".csv" in path.suffixes else [json.loads(line) for line in f if line.strip()]
    return [row[column] for row in rows]


def shadow_texts(path: Path, max_chars: int) -> list[str]:
    """The distinct texts of `path` a request may hold: a sample of recent requests in the order they came,
    IMDB's test file (stored by label) in the order of their hash, so that any bake reads both labels."""
    texts = list(dict.fromkeys(t for t in read_texts(path) if 0 < len(t) <= max_chars))
    return sorted(texts, key=lambda t: hashlib.sha256(t.encode()).digest()) if path == SHADOW_SOURCE else texts


class Shadow(threading.Thread):
    """Sends chunk i of `texts` (`batch` texts from i * batch on) to one URL, then chunk i + 1 after `interval`
    s, until stopped. Keeps every answer by chunk, so that two Shadows on the same texts pair up."""

    def __init__(self, url: str, texts: list[str], batch: int, interval: float):
        super().__init__(daemon=True)
        self.url, self.texts, self.batch, self.interval = url, texts, batch, interval
        self.stopping = threading.Event()
        self.answers: dict[int, dict] = {}  # chunk -> {"status", "seconds", "predictions" (200 only)}

    def chunk(self, i: int) -> list[str]:
        return [self.texts[(i * self.batch + k) % len(self.texts)] for k in range(self.batch)]

    def run(self) -> None:
        with requests.Session() as session:
            for i in range(10**9):
                started = time.perf_counter()
                try:
                    response = session.post(self.url, json={"texts": self.chunk(i)}, timeout=SHADOW_TIMEOUT)
                    answer = {"status": str(response.status_code)}
                    if response.status_code == 200:
                        answer["predictions"] = response.json()["predictions"]
                except requests.RequestException as error:
                    answer = {"status": type(error).__name__}
                self.answers[i] = {**answer, "seconds": time.perf_counter() - started}
                if self.stopping.wait(self.interval):
                    return

    def stop(self) -> dict:
        self.stopping.set()
        self.join(timeout=SHADOW_TIMEOUT + 5)
        statuses = Counter(a["status"] for a in self.answers.values())
        return {"url": self.url, "requests": len(self.answers), "texts_sent": len(self.answers) * self.batch,
                "requests_by_status": dict(statuses), "failed": len(self.answers) - statuses["200"]}


def paired_comparison(candidate: Shadow, default: Shadow) -> dict:
    """N against D on the distinct texts both answered (requests both answered 200): disagreement, the PSI of
    N's probabilities against D's, the paired difference of estimated accuracy with its one-sided ALPHA lower
    bound, the ratio of mean request latencies."""
    both = sorted(set(candidate.answers) & set(default.answers))
    both = [i for i in both if "predictions" in candidate.answers[i] and "predictions" in default.answers[i]]
    seen, n_p, d_p = set(), [], []
    for i in both:
        for text, a, b in zip(candidate.chunk(i), candidate.answers[i]["predictions"], default.answers[i]["predictions"]):
            if text not in seen:  # a replayed text is not new evidence
                seen.add(text)
                n_p.append(a["probability"])
                d_p.append(b["probability"])
    result = {"distinct_texts": len(seen), "texts_sent": len(both) * candidate.batch}
    if not seen:
        return result
    bounds = drift.PROBABILITY_LE
    gains = [c - d for c, d in zip(drift.confidences(n_p), drift.confidences(d_p))]
    mean_gain = statistics.fmean(gains)
    result.update(
        disagreement=sum((a >= 0.5) != (b >= 0.5) for a, b in zip(n_p, d_p)) / len(seen),
        probability_psi=drift.psi(drift.bin_counts(n_p, bounds), drift.bin_counts(d_p, bounds)),
        estimated_accuracy={"candidate": drift.estimated_accuracy(n_p), "default": drift.estimated_accuracy(d_p), "difference": mean_gain,
                            "lower_bound": mean_gain - Z_ALPHA * statistics.pstdev(gains) / math.sqrt(len(gains))},
        latency_ratio=statistics.fmean(candidate.answers[i]["seconds"] for i in both) / statistics.fmean(default.answers[i]["seconds"] for i in both),
    )
    return result


def shadow_checks(shadow: dict, paired: dict, restarts: int) -> list[dict]:
    """What N's shadow client saw, and N against D on the same texts."""
    sent = shadow["candidate"]["requests"]
    return [
        judge(Check("failed_requests", "N's shadow requests not answered 200 in SHADOW_TIMEOUT (any status, timeouts, refusals) / requests sent",
                    "<", MAX_ERROR_RATIO, "what a client would have got: a worker that died or stalled, a full queue, a crash"),
              shadow["candidate"]["failed"] / sent if sent else None),
        judge(Check("worker_restarts", "N's worker pids at the end of the bake not among those at its start (management API)", "<=", 0,
                    "a worker that died, however its requests were answered"), restarts),
        judge(Check("paired_texts", "distinct texts both N and D answered", ">=", MIN_PREDICTIONS,
                    "enough independent texts for the comparisons to mean something (drift.MIN_COUNT)"), paired["distinct_texts"]),
        judge(Check("disagreement", "share of the paired texts N labels otherwise than D", "<=", MAX_DISAGREEMENT,
                    "a retrain changes few answers; many changed answers are a different model"), paired.get("disagreement")),
        judge(Check("probability_shift", "PSI of N's answered probabilities against D's on the same texts", "<", PSI_MARGIN,
                    "N must not read the same traffic far otherwise than D"), paired.get("probability_psi")),
        judge(Check("estimated_accuracy", "mean over paired texts of max(p,1-p) of N less D's: its one-sided ALPHA lower bound", ">=",
                    -ESTIMATED_ACCURACY_MARGIN, "N must not expect itself more than ESTIMATED_ACCURACY_MARGIN less accurate than D "
                    "on the same texts"), paired.get("estimated_accuracy", {}).get("lower_bound")),
        judge(Check("latency_ratio", "N's mean shadow request seconds over D's, same texts, same load", "<", LATENCY_RATIO,
                    "N must not be much slower than D where it will replace it"), paired.get("latency_ratio")),
    ]


def prometheus_checks(candidate: str, bake: float, latency_ms: float, model: str = MODEL_NAME) -> list[Check]:
    """What only the server sees, over the bake alone: the handler's inference errors per request, TorchServe's latency."""
    n, over = f'ModelName="{model}",ModelVersion="{candidate}"', f"{bake:g}s"
    ts = f'model_name="{model}",model_version="{candidate}"'
    return [
        Check("inference_errors",
              f'(sum(increase(SentimentRequestErrors{{{n},Kind="inference_error"}}[{over}])) or vector(0))\n'
              f"/ sum(increase(ts_inference_requests_total{{{ts}}}[{over}]))",
              "<", MAX_ERROR_RATIO, "requests the model broke on (HTTP 500) per request TorchServe counted for N: like with like"),
        Check("latency_mean_ms",
              f"sum(rate(ts_inference_latency_microseconds{{{ts}}}[{over}]))\n/ sum(rate(ts_inference_requests_total{{{ts}}}[{over}])) / 1000",
              "<", round(latency_ms, 3), "N's mean inference latency in the bake, under the SentimentLatencyHigh threshold it will serve under"),
    ]


class Precondition(Exception):
    """Something the gate needs before it changes anything is missing."""


class DefaultChanged(Exception):
    """Someone else changed the default version while the gate ran: it stops rather than revert them."""


class Terminated(BaseException):
    """SIGTERM: roll back as after a failed check (a BaseException, as KeyboardInterrupt, so no `except Exception` swallows it)."""


def on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: the roll back must not be cut short by a second
    raise Terminated("SIGTERM")


class Promotion:
    """One run of the gate; `run()` returns a decision (EXIT's keys), and `record` holds why."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.n = args, args.candidate
        self.admin = TorchServeAdmin(args.management)
        self.archive = args.model_store / f"{MODEL_NAME}_v{self.n}.mar"
        self.state_file = args.records / "state.json"
        self.switched = False  # whether this run set the default to N
        self.started = time.time()
        self.record = {
            "candidate": self.n, "archive": str(self.archive), "started": stamp(self.started, "%Y-%m-%dT%H:%M:%SZ"),
            "server": {"inference": args.inference, "management": args.management, "metrics": args.metrics},
            "prometheus": args.prometheus,
            "settings": {"bake_s": args.bake, "shadow_batch": args.shadow_batch, "shadow_interval_s": args.shadow_interval,
                         "shadow_timeout_s": SHADOW_TIMEOUT, "alpha": ALPHA, "rules_window": args.rules_window,
                         "fresh": [str(p) for p in args.fresh]},
            "actions": [],
        }

    def act(self, action: str, **details) -> None:
        self.record["actions"].append({"at_s": round(time.time() - self.started, 2), "action": action, **details})
        log.info("%s %s", action, " ".join(f"{k}={v}" for k, v in details.items()))

    def save_state(self, phase: str) -> None:
        """What a rerun needs to finish or undo this run, written before each change it describes."""
        state = {"pid": os.getpid(), "candidate": self.n, "default": self.d, "default_workers": self.default_workers, "phase": phase}
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(state) + "\n")
        temporary.replace(self.state_file)

    def run(self) -> str:
        self.args.records.mkdir(parents=True, exist_ok=True)
        with open(self.args.records / "promote.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel however this process ends
            except BlockingIOError:
                return self.finish("nothing done", error=f"another promotion holds {lock.name}")
            previous = signal.signal(signal.SIGTERM, on_sigterm)
            try:
                return self.locked()
            finally:
                signal.signal(signal.SIGTERM, previous)

    def locked(self) -> str:
        try:
            if self.state_file.exists():
                self.recover(json.loads(self.state_file.read_text()))
            self.preflight()
        except DefaultChanged as error:
            return self.finish("stopped", error=str(error))
        except (Exception, KeyboardInterrupt, Terminated) as error:  # nothing has changed yet (a recovery's actions are in the record)
            return self.finish("nothing done", error=str(error) if isinstance(error, Precondition) else f"{type(error).__name__}: {error}")
        decision, error = "rolled back", None
        try:
            self.save_state("registering")
            # TorchServe 0.12 starts the archive's minWorkers whatever `initial_workers` says (2 for v1's config,
            # measured): the record keeps how many started before the scale to one
            self.admin.register(self.archive.name)
            self.act("registered", version=self.n, workers=len(self.admin.workers(version=self.n)))
            self.admin.scale(1, version=self.n)
            self.reload_rules(self.n)
            self.save_state("scoring")
            if self.score() and self.bake():
                self.promote()
                decision = "promoted"
        except DefaultChanged as failure:  # someone else's change stands: nothing more is undone
            decision, error = "stopped", str(failure)
        except (Exception, KeyboardInterrupt, Terminated) as failure:  # whatever broke, N must not stay half-deployed
            error = f"{type(failure).__name__}: {failure}"
            log.error("%s: rolling back", error)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # from here on, finish: a killed run leaves the state file
        if decision == "rolled back":
            try:
                self.roll_back()
            except DefaultChanged as failure:
                decision, error = "stopped", f"{error or 'rejected'}; {failure}"
            except Exception as failure:  # the record's default_after and versions_after say where it stopped
                error = f"{error or 'rejected'}; roll back failed: {type(failure).__name__}: {failure}"
        try:
            self.reload_rules(self.n)
        except Exception as failure:  # the decision stands; the monitor's rules are stale until `make monitor`
            self.record["warning"] = f"rules not reloaded: {type(failure).__name__}: {failure}; run `make monitor`"
        return self.finish(decision, error=error, done=True)

    def recover(self, state: dict) -> None:
        """Finish or undo what a run killed mid-way began (its state file): N's promotion is completed if N
        became the default, else N is unregistered; the rules follow."""
        served = {d["modelVersion"] for d in self.admin.describe(version="all")}
        default, n = self.admin.describe()[0]["modelVersion"], state["candidate"]
        if default == n:  # killed after set-default: the promotion stands
            self.admin.scale(state["default_workers"], version=n)
            self.admin.scale(RETAINED_WORKERS, version=state["default"])
            done = "promotion completed"
        elif n in served:
            self.admin.unregister(version=n)
            done = "candidate unregistered"
        else:
            done = "nothing left to undo"
        self.record["recovered"] = {"state": state, "default": default, "versions": sorted(served), "done": done}
        self.act("recovered a killed run", candidate=n, phase=state["phase"], done=done)
        self.reload_rules(n)
        self.state_file.unlink()
        if default not in (n, state["default"]):
            raise DefaultChanged(f"the default is v{default}, neither the killed run's v{state['default']} nor its candidate v{n}")

    def preflight(self) -> None:
        """Everything the run needs, checked before anything changes."""
        args = self.args
        if not self.archive.exists():
            raise Precondition(f"{self.archive} does not exist: `make archive VERSION={self.n} STORE={args.model_store}` builds it")
        candidate = rules.archived_signature(self.archive)
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
                           "default": rules.archived_signature(args.model_store / served[self.d]["modelUrl"])}
        self.default_workers = len(served[self.d]["workers"])
        instance = args.metrics.split("://")[-1].rstrip("/")
        deadline = time.monotonic() + SCRAPE_TIMEOUT  # `make promote` may have just started it (`make monitor`)
        while [s["value"][1] for s in query(args.prometheus, f'up{{job="torchserve",instance="{instance}"}}')] != ["1"]:
            if time.monotonic() > deadline:
                raise Precondition(f"Prometheus at {args.prometheus} does not scrape TorchServe's {instance}: `make monitor`")
            time.sleep(0.5)
        self.prometheus_pid()
        if args.latency_ms is not None:
            self.latency = {"ms": args.latency_ms, "from": "--latency-ms"}
        else:
            thresholds = rules.latency_thresholds(rules.measured_latencies(), self.d)
            measured = thresholds.get(self.n) or thresholds.get(self.d)
            if measured is None:
                raise Precondition(f"neither v{self.n} nor v{self.d} has `make bench` results: no latency threshold (`make bench VERSION={self.n}`)")
            self.latency = {"ms": measured["ms"], "from": f"v{measured['version']}: {rules.LATENCY_MULTIPLE} x p50 "
                            f"{measured['p50_ms']} ms, {measured['source']}"}
        self.labelled = {"test_split": data.held_out_test_split()}
        if args.fresh:
            texts, labels = [], []
            for path in args.fresh:
                more = data.load_labelled(path, candidate.labels)
                texts, labels = texts + more[0], labels + more[1]
            self.labelled["fresh_held_out"] = data.held_out_rows(texts, labels)
        source = args.shadow or SHADOW_SOURCE
        if not source.exists():
            raise Precondition(f"no shadow traffic: {source} does not exist (--shadow FILE: a sample of recent requests)")
        self.shadow_texts = shadow_texts(source, min(s.max_chars for s in self.signatures.values()))
        self.record.update(default_before=self.d, default_workers=self.default_workers, latency_threshold=self.latency,
                           candidate_training_metrics={k: candidate.metrics.get(k) for k in ("test", "fresh", "fresh_test")},
                           shadow_source={"path": str(source), "distinct_texts": len(self.shadow_texts)})

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

    def reload_rules(self, version: str) -> None:
        """`make monitor`'s rules regenerated from the versions served now, Prometheus reloaded, and waited
        for until it evaluates them (`version`'s reference present if it is registered, else gone)."""
        args = self.args
        served = version in {d["modelVersion"] for d in self.admin.describe(version="all")}
        run = subprocess.run([sys.executable, "-m", "sentiment.ops.rules", "--server", args.management,
                              "--model-store", str(args.model_store), "--rules-out", str(args.prom_home / "rules"), "--tests-out", "",
                              "--window", args.rules_window, "--for", args.rules_for], capture_output=True, text=True, timeout=120, cwd=ROOT)
        if run.returncode != 0:
            raise RuntimeError(f"sentiment.ops.rules failed: {run.stderr[-1000:]}")
        psutil.Process(self.prometheus_pid()).send_signal(signal.SIGHUP)
        reference = f'sentiment:reference_positive_rate{{ModelName="{MODEL_NAME}",ModelVersion="{version}"}}'
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while bool(query(args.prometheus, reference)) != served:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Prometheus did not {'load' if served else 'drop'} v{version}'s rules in {RELOAD_TIMEOUT} s")
            time.sleep(0.5)
        self.act("rules reloaded", versions=sorted(d["modelVersion"] for d in self.admin.describe(version="all")))

    def score(self) -> bool:
        """N and D on each labelled set through the server, text by text; the score gate."""
        paired, scores = {}, {}
        for name, (texts, labels) in self.labelled.items():
            right = {}
            for role, version in (("candidate", self.n), ("default", self.d)):
                signature = self.signatures[role]
                predictions, versions = evaluate.predict_served(texts, signature.max_texts, self.args.inference, MODEL_NAME, version)
                if versions != {version}:
                    raise RuntimeError(f"v{version} asked, answered by {sorted(versions)}")
                right[role] = [(p["label"] == signature.labels[1]) == bool(y) for p, y in zip(predictions, labels)]
                scores.setdefault(name, {})[role] = {"accuracy": round(sum(right[role]) / len(labels), 4), "correct": sum(right[role]),
                                                     "size": len(labels)}
            paired[name] = paired_score(right["candidate"], right["default"])
            if name == "test_split":
                paired["test_split_loss"] = paired_score(right["candidate"], right["default"], alternative="less")
        self.record["scores"] = scores
        self.record["score_checks"] = checks = score_checks(paired)
        self.act("scored", **{c["name"]: f"p={c['value']:.3g} {c['status']}" for c in checks})
        return passed(checks)

    def bake(self) -> bool:
        """The same shadow texts to N and D for --bake seconds; then the checks."""
        args = self.args
        self.save_state("baking")
        pids = {w["pid"] for w in self.admin.workers(version=self.n)}
        shadows = {role: Shadow(f"{args.inference}/predictions/{MODEL_NAME}/{version}", self.shadow_texts, args.shadow_batch,
                                args.shadow_interval) for role, version in (("candidate", self.n), ("default", self.d))}
        self.act("bake started", seconds=args.bake)
        for shadow in shadows.values():
            shadow.start()
        try:
            time.sleep(args.bake)
        finally:
            self.record["shadow"] = {role: shadow.stop() for role, shadow in shadows.items()}
        restarts = len({w["pid"] for w in self.admin.workers(version=self.n)} - pids)
        self.record["paired"] = paired = paired_comparison(shadows["candidate"], shadows["default"])
        results = shadow_checks(self.record["shadow"], paired, restarts)
        for check in prometheus_checks(self.n, args.bake, self.latency["ms"]):
            values = query(args.prometheus, check.query)
            results.append(judge(check, float(values[0]["value"][1]) if len(values) == 1 else None))
        self.record["bake_checks"] = results
        self.act("baked", **{r["name"]: f"{r['value']} {r['status']}" for r in results})
        return passed(results)

    def expect_default(self, version: str) -> None:
        """Compare (the first half of compare-and-set): TorchServe has no conditional set-default, so the gate
        reads the default under its lock just before each change and stops if it is not what this run left."""
        now = self.admin.describe()[0]["modelVersion"]
        if now != version:
            raise DefaultChanged(f"the default is v{now}, not v{version} as this run left it: someone else changed it; nothing reverted")

    def promote(self) -> None:
        self.expect_default(self.d)
        self.admin.scale(self.default_workers, version=self.n)  # before it takes the default's traffic
        self.save_state("promoting")
        self.expect_default(self.d)
        self.admin.set_default(self.n)
        self.switched = True
        time.sleep(DRAIN_SECONDS)
        self.admin.scale(RETAINED_WORKERS, version=self.d)
        self.act("promoted", default=self.n, workers=self.default_workers, previous_default_workers=RETAINED_WORKERS)

    def roll_back(self) -> None:
        """N unregistered; the default set back to D only if this run switched it and nobody changed it since."""
        served = {d["modelVersion"] for d in self.admin.describe(version="all")}
        if self.switched:
            self.expect_default(self.n)
            self.admin.set_default(self.d)
        elif self.n in served:
            self.expect_default(self.d)
        if self.n in served:
            self.admin.unregister(version=self.n)
        self.act("rolled back", default=self.d, unregistered=self.n in served)

    def finish(self, decision: str, error: str | None = None, done: bool = False) -> str:
        try:
            served = {d["modelVersion"]: d for d in self.admin.describe(version="all")}
            after = {"default_after": self.admin.describe()[0]["modelVersion"], "versions_after": sorted(served),
                     "workers_after": {v: len(d["workers"]) for v, d in served.items()}}
        except requests.RequestException as failure:
            after = {"default_after": None, "server_error": str(failure)}
        self.record.update(decision=decision, error=error, **after, seconds=round(time.time() - self.started, 1),
                           finished=stamp(time.time(), "%Y-%m-%dT%H:%M:%SZ"))
        self.args.records.mkdir(parents=True, exist_ok=True)
        path = self.args.records / f"{stamp(self.started, '%Y%m%dT%H%M%SZ')}-v{self.n}.json"
        path.write_text(json.dumps(self.record, indent=2) + "\n")
        self.record["path"] = str(path)
        if done:  # the server is as the decision says: nothing left for a rerun to finish or undo
            self.state_file.unlink(missing_ok=True)
        log.info("%s v%s%s; evidence: %s", decision, self.n, f" ({error})" if error else "", path)
        return decision


def stamp(seconds: float, form: str) -> str:
    return time.strftime(form, time.gmtime(seconds))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", required=True, help="the version to promote: <model store>/sentiment_v<N>.mar")
    parser.add_argument("--fresh", type=Path, action="append", default=[], help="fresh labelled reviews (CSV/JSONL text,label) as "
                        "given to sentiment/training/nbsvm.py --fresh; only the rows it holds out are scored. Repeatable")
    parser.add_argument("--shadow", type=Path, help="the bake's shadow texts (CSV/JSONL, gzipped or not, a text column): an opt-in "
                        f"sample of recent requests, never the references or the scored texts (default: {SHADOW_SOURCE})")
    parser.add_argument("--bake", type=float, default=BAKE_SECONDS, help="seconds (default %(default)s)")
    parser.add_argument("--latency-ms", type=float, help="the bound on N's mean inference latency in the bake (default: the "
                        "SentimentLatencyHigh threshold N will serve under, 4 x the p50 of its `make bench` results)")
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
    parser.add_argument("--records", type=Path, default=RECORDS, help="decisions, and the lock and state of the run in progress")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> tuple[str, dict]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    promotion = Promotion(parse(argv))
    return promotion.run(), promotion.record


if __name__ == "__main__":
    sys.exit(EXIT[main()[0]])
