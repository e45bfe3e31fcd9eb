"""Continued evaluation watched by a real Prometheus (Debian's `prometheus` package, installed by
`make test`): the reference distribution in the signature, the statistics, the rules and their
promtool unit tests, sentiment/ops/drift_report.py, and a demonstration on a private TorchServe and a private
Prometheus (free ports, their own temp dirs, 1 s scrapes and rule evaluations, a 10 s window):
in-distribution traffic raises no alert, only-negative reviews, long reviews and snippets without
their sentiment words (a drop of the estimated accuracy) do; and the estimated-accuracy rule is the
mean of max(p, 1 - p) over what was served.
"""

import http.server
import json
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from sentiment.serving import drift
from sentiment.ops import drift_report, prometheus
import quick_v2
from sentiment import data
from sentiment.training import nbsvm
from scripts import calibration
from sentiment.ops.torchserve import ROOT, LocalTorchServe, free_port

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DEMO_WINDOW, DEMO_FOR = "10s", "2s"
MODEL_STORE = ROOT / "model_store"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: `make prometheus` installs Debian's prometheus package (it brings promtool)"
    return path


# --- the reference and the statistic ---------------------------------------------------------------

def test_signature_holds_the_test_split_in_the_served_buckets(signature):
    reference = signature.reference
    assert reference["n"] == signature.metrics["test"]["size"]
    assert reference["probability"]["le"] == [drift.le_label(b) for b in drift.TORCHSERVE_BUCKETS if b <= 1]
    assert reference["input_kchars"]["le"] == [drift.le_label(b) for b in drift.TORCHSERVE_BUCKETS] + ["+Inf"]
    for key in drift.HISTOGRAMS:
        assert sum(reference[key]["counts"]) == reference["n"]
    # positives are the probabilities >= 0.5: the bins above the 0.5 bound (a probability of exactly 0.5 is the only slack)
    above = sum(c for le, c in zip(reference["probability"]["le"], reference["probability"]["counts"]) if float(le) > 0.5)
    assert abs(above / reference["n"] - reference["positive_rate"]) <= 2 / reference["n"]
    # rt-polarity snippets: 5 to 500 characters
    assert sum(reference["input_kchars"]["counts"][:2] + reference["input_kchars"]["counts"][8:]) == 0


def test_psi_values():
    assert drift.psi([10, 20, 30], [10, 20, 30]) == 0
    assert drift.psi([1, 0], [0, 1]) == pytest.approx(math.log(3))  # shares 3/4, 1/4 against 1/4, 3/4, smoothed by 1/2
    assert drift.psi([5, 0, 0], [0, 0, 5]) > drift.PSI_CRITICAL
    with pytest.raises(ValueError):
        drift.psi([1, 2], [1, 2, 3])
    assert drift.bin_counts([0.005, 0.0051, 1.0, 0.0], drift.PROBABILITY_LE) == [2, 1] + [0] * 7 + [1]


def test_compare_gives_a_verdict_only_with_enough_traffic(signature):
    reference = signature.reference
    same = {"predictions": reference["n"], "positive": reference["positive_rate"] * reference["n"],
            "expected_correct": reference["estimated_accuracy"] * reference["n"],
            "probability": reference["probability"]["counts"], "input_kchars": reference["input_kchars"]["counts"]}
    assert drift.compare(same, reference)["verdict"] == "ok"
    negative = {**same, "positive": 0.1 * reference["n"]}
    assert drift.compare(negative, reference)["positive_rate_level"] == "warning"
    assert drift.compare(negative, reference)["verdict"] == "warning"
    margin = drift.estimated_accuracy_margin(reference, reference["n"])  # at the window's count, not MIN_COUNT's
    for drop, level in ((0.9 * margin, "ok"), (1.1 * margin, "warning")):
        unsure = {**same, "expected_correct": (reference["estimated_accuracy"] - drop) * reference["n"]}
        assert drift.compare(unsure, reference)["estimated_accuracy_level"] == drift.compare(unsure, reference)["verdict"] == level
    few = {key: (value / 10 if key == "predictions" else value) for key, value in negative.items()}
    assert drift.compare(few, reference)["verdict"] == "insufficient data"


def chance_pages(versions: int, per_minute: int, days: int = 30, window: int = 30, hold: int = 10, seed: int = 5) -> tuple[int, int]:
    """SentimentEstimatedAccuracyDrop on traffic that did not change, simulated: each version's reference (1,066
    answers; the sd cancels, margin and noise scale with it) reads off by one draw of its sampling error, its windows of `window` minutes of `per_minute`
    answers are evaluated every minute against drift.estimated_accuracy_margin at their count, and an
    alert fires when the condition holds `hold` minutes on (normal means, minute by minute). Returns
    (alerts, versions that paged at all)."""
    np = pytest.importorskip("numpy")
    rng, reference = np.random.default_rng(seed), {"estimated_accuracy_sd": 0.1234, "n": 1066}
    sd, margin = reference["estimated_accuracy_sd"], drift.estimated_accuracy_margin(reference, per_minute * window)
    alerts, paged = 0, 0
    for _ in range(versions):
        bias = rng.normal(0, sd / math.sqrt(reference["n"]))
        minutes = rng.normal(0, sd / math.sqrt(per_minute), days * 24 * 60 + window)
        low = np.convolve(minutes, np.ones(window) / window, mode="valid") < bias - margin
        edges = np.flatnonzero(np.diff(np.concatenate([[0], low.astype(int), [0]])))
        episodes = int(np.sum(edges[1::2] - edges[::2] > hold))
        alerts, paged = alerts + episodes, paged + (episodes > 0)
    return alerts, paged


def test_estimated_accuracy_alert_pages_by_chance_about_one_version_in_a_thousand():
    """The margin at the window's own count, with the reference's error as the fixed bias it is for all of a
    version's windows: a margin pooling both errors paged 6 of 400 unchanged versions, again and again."""
    for per_minute in (1000, 14):  # a busy service, and one just over MIN_COUNT in 30 minutes
        alerts, paged = chance_pages(1000, per_minute)
        assert paged <= 5 and alerts <= 10, (per_minute, alerts, paged)  # of 1,000 versions, 30,000 version-days


# --- the rules ---------------------------------------------------------------------------------------

def test_promtool_unit_tests_pass():
    """Every rule file's unit tests: each alert fires on drifted or failing series, stays silent on normal ones and across a restart."""
    tests = sorted(str(p) for p in (PROMETHEUS_DIR / "tests").glob("*.test.yml"))
    assert {Path(t).name for t in tests} == {"drift.test.yml", "health.test.yml", "latency.test.yml"}
    run = subprocess.run([tool("promtool"), "test", "rules", *tests], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("SUCCESS") == 3, run.stdout


def test_prometheus_config_and_rules_are_valid():
    run = subprocess.run([tool("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 rule files found" in run.stdout


def test_committed_rules_are_generated_from_the_signature(export_dir, tmp_path):
    """The committed reference rules hold the references of the exports their header names (to a few
    test texts' worth of tolerance: a retrain on another machine may move a text across a bin bound;
    versions not built here are not compared), the drift rules are exactly what the generator writes,
    and the generator's unit tests pass on this machine's signature too."""
    committed_text = (PROMETHEUS_DIR / "rules" / "reference.rules.yml").read_text()
    sources = committed_text.splitlines()[0].split(" from ", 1)[1].split(": do not edit")[0].split(", ")
    exports = [ROOT / Path(source).parent for source in sources]
    assert export_dir in exports, f"the committed reference rules do not hold v1's reference: {sources}"
    built = [folder for folder in exports if (folder / "signature.json").exists()]
    run = subprocess.run([sys.executable, "-m", "sentiment.ops.rules", *[a for f in built for a in ("--export", str(f))],
                          "--rules-out", str(tmp_path / "rules"), "--tests-out", str(tmp_path / "tests")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr

    def constants(document: dict) -> dict:
        return {(rule["record"], tuple(sorted(rule["labels"].items()))): float(rule["expr"].removeprefix("vector(").removesuffix(")"))
                for rule in document["groups"][0]["rules"]}

    fresh = constants(yaml.safe_load((tmp_path / "rules" / "reference.rules.yml").read_text()))
    versions = {dict(labels)["ModelVersion"] for _, labels in fresh}
    committed = {key: value for key, value in constants(yaml.safe_load(committed_text)).items()
                 if dict(key[1])["ModelVersion"] in versions}
    assert committed.keys() == fresh.keys()
    for key, value in fresh.items():
        assert committed[key] == pytest.approx(value, abs=3 / 1066), (key, committed[key], value)

    def load(path):
        return yaml.safe_load(path.read_text())

    for generated in ("rules/drift.rules.yml", "rules/latency.rules.yml", "tests/latency.test.yml"):
        assert load(PROMETHEUS_DIR / generated) == load(tmp_path / generated), \
            f"deploy/prometheus/{generated} differs from what sentiment/ops/rules.py writes: `make rules`"
    run = subprocess.run([tool("promtool"), "test", "rules", str(tmp_path / "tests" / "drift.test.yml")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_make_monitor_follows_the_served_versions_and_leaves_the_tree_clean(both_versions, tmp_path):
    """`make monitor` against a TorchServe serving v1 and the quick v2, v2 the default (as `make serve
    VERSION=2`), with a private Prometheus: its rules hold both references (each the served archive's) and
    each version's latency threshold, "default" judged by v2's; the committed rules are not rewritten and
    what it writes by default is ignored by git. Run again, it reloads."""
    store, ts = quick_v2.build(), both_versions
    committed = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in PROMETHEUS_DIR.rglob("*.yml")}
    home, url = tmp_path / "prometheus", f"http://127.0.0.1:{free_port()}"
    ts.admin.set_default("2")
    monitor = ["make", "-s", "monitor", f"MANAGEMENT={ts.management}", f"METRICS={ts.metrics}", f"PROMETHEUS={url}",
               f"PROM_HOME={home}", f"STORE={store}"]
    try:
        run = subprocess.run(monitor, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        rules = [rule for group in requests.get(url + "/api/v1/rules", timeout=10).json()["data"]["groups"] for rule in group["rules"]]
        deadline = time.monotonic() + 20  # the scrape target is discovered a moment after ready
        while not (targets := requests.get(url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        again = subprocess.run(monitor, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        ts.admin.set_default("1")
        pid = int((home / "prometheus.pid").read_text())
        prometheus = psutil.Process(pid)
        assert prometheus.name() == "prometheus" and str(home) in " ".join(prometheus.cmdline())
        prometheus.terminate()
        prometheus.wait(timeout=30)
    served = {}
    for version, mar in (("1", "sentiment.mar"), ("2", "sentiment_v2.mar")):
        with zipfile.ZipFile(store / mar) as archive:
            served[version] = json.loads(archive.read("signature.json"))["reference"]["positive_rate"]
    positive_rates = {rule["labels"]["ModelVersion"]: float(rule["query"].removeprefix("vector(").removesuffix(")"))
                      for rule in rules if rule["name"] == "sentiment:reference_positive_rate"}
    assert positive_rates == pytest.approx(served)
    latency = {rule["labels"]["ModelVersion"]: rule for rule in rules if rule["name"] == "SentimentLatencyHigh"}
    assert latency.keys() == {"1", "2", "default"}
    assert latency["default"]["annotations"]["summary"].startswith("Sentiment default version (v2)")
    assert latency["default"]["query"].split(" > ")[1] == latency["2"]["query"].split(" > ")[1]
    assert [t["scrapeUrl"] for t in targets] == [ts.metrics + "/metrics"]
    assert again.returncode == 0 and "reloaded its config and rules" in again.stdout, again.stdout + again.stderr
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in PROMETHEUS_DIR.rglob("*.yml")} == committed
    default_home = subprocess.run(["make", "-s", "--eval", "print-home: ; @echo $(PROM_HOME)", "print-home"], cwd=ROOT,
                                  capture_output=True, text=True, check=True).stdout.strip()
    for written in ("prometheus.yml", "rules/reference.rules.yml", "rules/drift.rules.yml", "rules/latency.rules.yml"):
        assert subprocess.run(["git", "check-ignore", "-q", f"{default_home}/{written}"], cwd=ROOT).returncode == 0, written


# --- drift_report without Prometheus ---------------------------------------------------------------------

def test_drift_report_says_when_prometheus_is_down(export_dir, capsys):
    code = drift_report.main(["--prometheus", f"http://127.0.0.1:{free_port()}", "--export", str(export_dir)])
    err = capsys.readouterr().err
    assert code == 2
    assert "Prometheus is not reachable at http://127.0.0.1:" in err and "make monitor" in err


def test_drift_report_says_when_prometheus_is_not_installed(export_dir, capsys, monkeypatch):
    monkeypatch.setattr(prometheus.shutil, "which", lambda name: None)  # the Prometheus client asks
    code = drift_report.main(["--prometheus", f"http://127.0.0.1:{free_port()}", "--export", str(export_dir)])
    assert code == 2
    assert "Prometheus is not installed" in capsys.readouterr().err


def test_drift_report_says_when_the_answer_is_not_prometheus(export_dir, capsys):
    """Something else on the address (here a plain HTTP server answering 404 pages)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = drift_report.main(["--prometheus", f"http://127.0.0.1:{server.server_address[1]}", "--export", str(export_dir)])
    finally:
        server.shutdown()
        server.server_close()
    assert code == 2
    assert "without JSON: is it Prometheus?" in capsys.readouterr().err


# --- the demonstration ---------------------------------------------------------------------------------

class Prometheus:
    """A private Prometheus: free loopback port, its own data dir in a temp dir, stopped by its pid."""

    def __init__(self, config: dict, home: Path):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (home / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = None

    def start(self, timeout: float = 30) -> "Prometheus":
        self.log = open(self.home / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={self.home / 'prometheus.yml'}", f"--storage.tsdb.path={self.home / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.home / "prometheus.log").read_text()[-3000:]
            try:
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("Prometheus did not become ready:\n" + (self.home / "prometheus.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if getattr(self, "log", None):
            self.log.close()

    def query(self, expr: str) -> list[dict]:
        return prometheus.query(self.url, expr)

    def alerts(self) -> list[dict]:
        return requests.get(self.url + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]


def fast_config(ts: LocalTorchServe, rules: Path) -> dict:
    """The repository's Prometheus config with 1 s scrapes and evaluations, `ts` as the target and the rules generated into `rules`."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules / "reference.rules.yml"), str(rules / "drift.rules.yml"),
                            str(PROMETHEUS_DIR / "rules" / "health.rules.yml")]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [ts.metrics.removeprefix("http://")]}]
    return config


def generate_rules(export_dir: Path, rules: Path, window: str) -> None:
    subprocess.run([sys.executable, "-m", "sentiment.ops.rules", "--export", str(export_dir),
                    "--window", window, "--for", DEMO_FOR, "--rules-out", str(rules), "--tests-out", ""],
                   check=True, capture_output=True, timeout=120, cwd=ROOT)


class Traffic(threading.Thread):
    """Posts {"texts": [...]} of `batch` texts from the current pool every `pause` s until stopped."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.pool, self.batch, self.pause = url, [], 64, 0.2
        self.stopped = threading.Event()
        self.sent = self.failed = 0

    def use(self, pool: list[str], batch: int) -> None:
        self.pool, self.batch = pool, batch

    def run(self) -> None:
        start = 0
        while not self.stopped.is_set():
            pool, batch = self.pool, self.batch
            texts = [pool[(start + i) % len(pool)] for i in range(batch)]
            start += batch
            try:
                ok = requests.post(self.url, json={"texts": texts}, timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            self.sent += batch
            self.failed += not ok
            self.stopped.wait(self.pause)


def drift_alerts(alerts: list[dict]) -> dict:
    """{(alertname, severity): state} of the drift alerts and the estimated accuracy's."""
    return {(a["labels"]["alertname"], a["labels"].get("severity")): a["state"] for a in alerts
            if a["labels"]["alertname"].startswith("Sentiment")
            and ("Drift" in a["labels"]["alertname"] or a["labels"]["alertname"] == "SentimentEstimatedAccuracyDrop")}


def wait_for(prometheus: Prometheus, wanted: list[tuple[str, str]], since: float, timeout: float = 45) -> dict:
    """Poll the alerts until every `wanted` (alertname, severity) fires; seconds since `since` to pending and to firing."""
    seen = {key: {} for key in wanted}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = drift_alerts(prometheus.alerts())
        now = time.monotonic() - since
        for key in wanted:
            state = states.get(key)
            if state in ("pending", "firing"):
                seen[key].setdefault("pending", now)
            if state == "firing":
                seen[key].setdefault("firing", now)
        if all("firing" in times for times in seen.values()):
            return {f"{name} ({severity})": {state: round(t, 2) for state, t in times.items()} for (name, severity), times in seen.items()}
        time.sleep(0.25)
    raise AssertionError(f"not all of {wanted} fired within {timeout} s: {seen}; now {drift_alerts(prometheus.alerts())}")


@pytest.fixture(scope="module")
def pools():
    texts, labels, _ = data.load_dataset()
    validation = data.split(len(texts))["validation"]  # in-distribution, but not the test split the reference is
    negative = [texts[i] for i in validation if labels[i] == 0]
    positive = [texts[i] for i in validation if labels[i] == 1]
    # positives and negatives in turn, so that any window of the traffic is balanced like the reference's test
    # split (the validation split in its order drifts: its first 600 snippets are 54 % positive)
    in_distribution = [text for pair in zip(positive, negative) for text in pair]
    long_reviews, current = [], ""
    for text in in_distribution:  # 1,000 to 2,500 characters: whole reviews instead of snippets
        current += text + " "
        if len(current) >= 1000:
            long_reviews.append(current.strip())
            current = ""
    train_rows = data.split(len(texts))["train"]
    words = calibration.sentiment_words([texts[i] for i in train_rows], [labels[i] for i in train_rows])
    masked = [m for m in (calibration.masked(text, words) for text in in_distribution) if m.strip()]  # a model less sure of them
    return {"in_distribution": in_distribution, "negative": negative, "long": long_reviews, "masked": masked}


def test_demo_drift_alerts_fire_through_a_real_prometheus(export_dir, signature, pools, scrape, tmp_path):
    """Serve, watch, send in-distribution traffic (no alert), then only negative reviews, long reviews,
    and snippets without their sentiment words: the alerts go pending and fire, seen through
    Prometheus' API; drift_report agrees."""
    home = Path(tempfile.mkdtemp(prefix="prometheus-demo-"))
    timings = {}
    started = time.monotonic()
    rules = home / "rules"
    generate_rules(export_dir, rules, DEMO_WINDOW)
    ts = LocalTorchServe(MODEL_STORE)
    prometheus = traffic = None
    try:
        ts.start()
        timings["torchserve_start_s"] = time.monotonic() - started
        url = ts.inference + "/predictions/sentiment"
        assert requests.post(url, json={"texts": pools["in_distribution"][:8]}, timeout=30).status_code == 200

        # The served bins are the ones the reference is binned in.
        deadline = time.monotonic() + 20
        while not (bins := scrape(ts).samples("SentimentProbabilityBin")) and time.monotonic() < deadline:
            time.sleep(0.25)
        for family, bounds in drift.HISTOGRAMS.values():
            served = {drift.parse_le(s.labels["le"]) for s in scrape(ts).samples(family)}
            assert served and served <= set(bounds), (family, served)
        assert bins

        prometheus = Prometheus(fast_config(ts, rules), home).start()
        timings["prometheus_start_s"] = time.monotonic() - started - timings["torchserve_start_s"]

        # 1. In-distribution traffic (the validation split) for a window and more: no drift alert.
        traffic = Traffic(url)
        traffic.use(pools["in_distribution"], 64)
        traffic.start()
        phase = time.monotonic()
        seen = set()
        while time.monotonic() - phase < 14:
            seen |= {key for key, state in drift_alerts(prometheus.alerts()).items()}
            time.sleep(0.25)
        psi = drift_report.by_version(prometheus.query(f"sentiment:probability_psi:{DEMO_WINDOW}"))
        rate = drift_report.by_version(prometheus.query(f"sentiment:positive_rate:{DEMO_WINDOW}"))
        n = drift_report.by_version(prometheus.query(f"sentiment:predictions:increase{DEMO_WINDOW}"))
        estimate = drift_report.by_version(prometheus.query("sentiment:estimated_accuracy"))
        version = ("sentiment", signature.version)
        timings["in_distribution"] = {"probability_psi": psi.get(version), "positive_rate": rate.get(version),
                                      "estimated_accuracy": estimate.get(version), "predictions_in_window": n.get(version)}
        assert n.get(version, 0) >= drift.MIN_COUNT, timings
        assert psi[version] < drift.PSI_WARNING and abs(rate[version] - signature.reference["positive_rate"]) < drift.POSITIVE_RATE_TOLERANCE, timings
        assert not seen, f"drift alerts on in-distribution traffic: {seen}"
        assert prometheus.query('up{job="torchserve"} == 1'), "Prometheus does not scrape TorchServe"

        # 2. Only negative reviews: the positive rate and the probability distribution move.
        traffic.use(pools["negative"], 64)
        phase = time.monotonic()
        timings["negative_reviews"] = wait_for(prometheus, [("SentimentPositiveRateDrift", "warning"),
                                                            ("SentimentProbabilityDrift", "warning"),
                                                            ("SentimentProbabilityDrift", "critical")], phase)
        assert ("SentimentInputLengthDrift", "warning") not in drift_alerts(prometheus.alerts())

        # drift_report reads the same API: it finds the drift, and its PSI is Prometheus' own.
        report_png = tmp_path / "drift.png"
        code = drift_report.main(["--prometheus", prometheus.url, "--window", DEMO_WINDOW,
                                  "--export", str(export_dir), "--png", str(report_png)])
        assert code == 1
        assert report_png.stat().st_size > 10_000
        # The rules' PSI samples of the last seconds, at the times the rules were evaluated, against
        # drift_report's at those times (a scrape landing during a rule evaluation can differ: most must match).
        time.sleep(2)
        recorded = prometheus.query(f'sentiment:probability_psi:{DEMO_WINDOW}{{ModelVersion="{signature.version}"}}[5s]')[0]["values"]
        references = drift_report.load_references([export_dir])
        pairs = [(float(value), drift_report.assess(drift_report.collect(prometheus.url, DEMO_WINDOW, at), references)[0]["stats"]["probability_psi"])
                 for at, value in recorded]
        assert sum(abs(a - b) < 1e-6 for a, b in pairs) >= len(pairs) - 1 >= 2, f"drift_report's PSI differs from the rules': {pairs}"

        # 3. Long reviews instead of snippets: the input length drifts.
        traffic.use(pools["long"], 16)
        phase = time.monotonic()
        timings["long_reviews"] = wait_for(prometheus, [("SentimentInputLengthDrift", "warning"),
                                                        ("SentimentInputLengthDrift", "critical")], phase)

        # 4. Snippets without their sentiment words: the model is less sure, its estimated accuracy falls.
        traffic.use(pools["masked"], 64)
        phase = time.monotonic()
        timings["sentiment_words_masked"] = wait_for(prometheus, [("SentimentEstimatedAccuracyDrop", "warning")], phase)
        timings["sentiment_words_masked"]["estimated_accuracy"] = drift_report.by_version(
            prometheus.query("sentiment:estimated_accuracy")).get(version)
        assert traffic.failed == 0
        timings["total_s"] = time.monotonic() - started
    finally:
        if traffic is not None:
            traffic.stopped.set()
            traffic.join(timeout=30)
        if prometheus is not None:
            prometheus.stop()
        ts.stop()
        shutil.rmtree(home, ignore_errors=True)
    assert prometheus.process.poll() is not None, "Prometheus outlived the test"
    out = ROOT / "build" / "monitoring-demo.json"  # the measured times, for the README
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"window": DEMO_WINDOW, "for": DEMO_FOR, "scrape_and_evaluation_interval": "1s", **timings}, indent=2) + "\n")
    print(json.dumps(timings, indent=2))


ESTIMATE_WINDOW = 20  # seconds: the window of the estimated-accuracy test's rules


def counter_samples(prometheus: Prometheus, metric: str, version: str, seconds: int = 120) -> dict:
    """{series labels: [(t, value), ...]}: what Prometheus scraped of a counter's series in the last `seconds`."""
    return {tuple(sorted(s["metric"].items())): [(float(t), float(v)) for t, v in s["values"]]
            for s in prometheus.query(f'{metric}{{ModelVersion="{version}"}}[{seconds}s]')}


def held(samples: list[tuple[float, float]], value: float) -> list[float]:
    """The times at which a series held `value`."""
    return [t for t, v in samples if v == value]


def test_estimated_accuracy_rule_is_the_mean_confidence_of_what_was_served(export_dir, signature, pools, tmp_path):
    """Through a real TorchServe and Prometheus (1 s scrapes and evaluations, a 20 s window): 192
    validation reviews, a pause, then the 1,066 held-out test reviews. Every value the recording rule
    sentiment:estimated_accuracy took while its window held the whole burst and none of the warm-up is
    the mean of max(p, 1 - p) over the burst's answers, to 1e-6 (the handler's counter, increase() and
    the rule add up exactly what was served), and that is within its sampling error of the burst's true
    accuracy. The warm-up makes every series exist, with counts that keep increase() from extrapolating
    each series to its own zero (which would skew the ratio), well before the window."""
    rules, window = tmp_path / "rules", f"{ESTIMATE_WINDOW}s"
    generate_rules(export_dir, rules, window)
    texts, labels, _ = data.load_dataset()
    test = data.split(len(texts))["test"]
    version = signature.version
    with LocalTorchServe(MODEL_STORE) as ts:
        prometheus = Prometheus(fast_config(ts, rules), tmp_path).start()
        try:
            url = ts.inference + "/predictions/sentiment"

            def served(batch: list[str]) -> list[float]:
                answers = []
                for start in range(0, len(batch), 64):
                    response = requests.post(url, json={"texts": batch[start : start + 64]}, timeout=30)
                    assert response.status_code == 200, response.text
                    answers += [p["probability"] for p in response.json()["predictions"]]
                return answers

            def scraped(total: int, timeout: float = 30) -> None:
                deadline = time.monotonic() + timeout
                while not prometheus.query(f'sum(SentimentPredictions{{ModelVersion="{version}"}}) >= {total}'):
                    assert time.monotonic() < deadline, f"Prometheus did not see {total} predictions"
                    time.sleep(0.25)

            warm_up = served(pools["in_distribution"][:192])
            scraped(len(warm_up))
            time.sleep(8)  # flat samples: the window's start can fall after the warm-up and before the burst
            burst_started = time.time()
            burst = served([texts[i] for i in test])
            scraped(len(warm_up) + len(burst))
            series = {metric: counter_samples(prometheus, metric, version) for metric in ("SentimentPredictions", "SentimentExpectedCorrect")}
            flat = [samples for by_labels in series.values() for samples in by_labels.values()]
            assert len(flat) == 3, series  # the two labels' predictions and the expected-correct sum
            warm = [held(samples, max(v for t, v in samples if t < burst_started)) for samples in flat]
            first = max(times[0] for times in warm)  # from here every series holds its whole warm-up count
            before = min(times[-1] for times in warm)  # the last samples before the burst
            after = max(held(samples, samples[-1][1])[0] for samples in flat)  # every series has its final count
            low, high = max(first + ESTIMATE_WINDOW, after) + 1, before + ESTIMATE_WINDOW - 1  # 1 s clear of scrapes racing evaluations
            assert high - low >= 2, (first, before, after)
            while time.time() < high + 2:
                time.sleep(0.5)
            recorded = [(float(t), float(v)) for t, v in prometheus.query(
                f'sentiment:estimated_accuracy{{ModelVersion="{version}"}}[{int(time.time() - low) + 2}s]')[0]["values"]]
            reference = drift_report.by_version(prometheus.query("sentiment:reference_estimated_accuracy"))
        finally:
            prometheus.stop()
    expected = drift.estimated_accuracy(burst)
    in_window = [value for t, value in recorded if low <= t <= high]
    assert len(in_window) >= 2, (recorded, low, high)
    assert all(abs(value - expected) < 1e-6 for value in in_window), (expected, in_window)
    correct = [(p >= signature.threshold) == bool(labels[i]) for p, i in zip(burst, test)]
    accuracy = sum(correct) / len(correct)
    assert abs(accuracy - expected) <= drift.ESTIMATED_ACCURACY_Z * drift.estimate_error(burst), (accuracy, expected)
    assert reference[("sentiment", version)] == pytest.approx(signature.reference["estimated_accuracy"], abs=1e-9)
