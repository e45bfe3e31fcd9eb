"""The promotion gate (promote.py, `make promote`) end to end on a real TorchServe and a real Prometheus:
a better candidate is promoted, a worse one (trained on flipped labels) and a broken one (the
fault-injecting handler, failing on live traffic the labelled sets do not hold) are rolled back, while
clients keep being answered (by v1 until a promotion) without one failed request.

The candidates are v1-architecture version 3s (train.py, seconds), built by `make archive` into
build/test-promote/<hash of their data>/, never into build/v1 or model_store/. Their fresh labels
stand for a sample of recent traffic that v1 reads badly: half rt-polarity validation snippets
(v1 knows these), half snippets whose verdict is a word v1 has never seen ("the sequel was so
zorbish"), so a version retrained on them is better on their held-out share and no worse on the test
split. The Prometheus is private, with 1 s scrapes and evaluations and the monitor's rules over a 1 m
window; the bake is BAKE seconds.
"""

import csv
import hashlib
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import yaml

import drift_report
import promote
import train
from bench.archive import extract
from fault_handler import RAISE_MARKER
from local_server import ROOT, LocalTorchServe
from test_monitoring import Prometheus

BUILD = ROOT / "build" / "test-promote"
CANDIDATE = "3"
# The monitor's rules over a window longer than the bake, as in production (30 m, 10 min): the gate must read
# the bake alone where it compares N with D (the scored texts just before the bake are D's and N's reference).
BAKE, WINDOW, FOR = 12, "1m", "2s"
SHADOW_BATCH, SHADOW_INTERVAL = 16, 0.2  # 80 texts a second: ~960 in the bake, over promote.MIN_PREDICTIONS
CLIENT_PAUSE = 0.02  # s between one client's requests: traffic that leaves the 2 cores to the gate too
NEW_WORDS = {1: ["zorbish", "glimmerful", "vexquent", "trazzy"], 0: ["blorky", "snarfed", "drendly", "plumbic"]}
SUBJECTS = ["the film", "this movie", "the sequel", "the plot", "the cast", "the ending", "the soundtrack", "the remake"]
TEMPLATES = ["{s} was {a}{w}", "honestly, {s} is {a}{w}", "{s} felt {a}{w} from start to finish", "{a}{w}: that sums up {s}",
             "everyone agreed {s} was {a}{w}", "i thought {s} was {a}{w}"]
ADVERBS = ["", "so ", "kinda ", "really ", "totally "]


def fresh_labels() -> list[tuple[str, int]]:
    """600 snippets with a new verdict word and 600 validation snippets, shuffled (fixed seed)."""
    rng = random.Random(19)
    new = [(t.format(s=s, a=a, w=w), label) for label, words in NEW_WORDS.items() for w in words
           for s in SUBJECTS for t in TEMPLATES for a in ADVERBS]
    texts, labels, _ = train.load_dataset()
    validation = train.split(len(texts))["validation"]
    rows = rng.sample(new, 600) + [(texts[i], labels[i]) for i in rng.sample(validation, 600)]
    rng.shuffle(rows)
    return rows


def write_csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def archive(folder: Path, train_args: str) -> Path:
    """`make archive VERSION=3 ARCH=nbsvm` (v1's trainer) with v1's seed, into `folder`."""
    subprocess.run(["make", "-s", "archive", f"VERSION={CANDIDATE}", "ARCH=nbsvm", "SEED=1", f"BUILD={folder}", f"STORE={folder}",
                    f"TRAIN_ARGS={train_args}"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return folder / f"sentiment_v{CANDIDATE}.mar"


def with_fault_handler(mar: Path, folder: Path) -> Path:
    """The same archive with tests/fault_handler.py as its handler: a text holding RAISE_MARKER breaks the model."""
    unpacked = extract(mar, folder / "unpacked")
    manifest = json.loads((unpacked / "MAR-INF" / "MANIFEST.json").read_text())["model"]
    extra = sorted(str(f) for f in unpacked.iterdir() if f.is_file() and f.name not in (manifest["serializedFile"], manifest["configFile"]))
    subprocess.run([str(Path(sys.executable).with_name("torch-model-archiver")), "--force", "--model-name", "sentiment",
                    "--version", CANDIDATE, "--serialized-file", str(unpacked / manifest["serializedFile"]),
                    "--handler", str(Path(__file__).with_name("fault_handler.py")), "--config-file", str(unpacked / manifest["configFile"]),
                    "--extra-files", ",".join(extra), "--export-path", str(folder)], check=True)
    return folder / "sentiment.mar"


@pytest.fixture(scope="module")
def data() -> dict:
    """The fresh labels, their flipped copy, and shadow traffic with breaking texts (one in 50) for the broken candidate."""
    rows = fresh_labels()
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:12]
    folder = BUILD / digest
    folder.mkdir(parents=True, exist_ok=True)
    held_out = [text for text, _ in rows if train.is_held_out(text)]
    swapped = folder / "flipped-corpus"  # rt-polarity with its two files swapped: every label flipped
    swapped.mkdir(exist_ok=True)
    for name, other in (("rt-polarity.pos", "rt-polarity.neg"), ("rt-polarity.neg", "rt-polarity.pos")):
        if not (swapped / name).exists():
            (swapped / name).symlink_to(train.DATA_DIR / other)
    return {"folder": folder, "rows": rows, "fresh": write_csv(folder / "fresh.csv", rows),
            "flipped": write_csv(folder / "fresh-flipped.csv", [(text, 1 - label) for text, label in rows]),
            "swapped_corpus": swapped,
            "breaking_traffic": write_csv(folder / "breaking-traffic.csv",
                                          [(text + (f" {RAISE_MARKER}" if i % 50 == 0 else ""), 0) for i, text in enumerate(held_out)])}


@pytest.fixture(scope="module")
def candidates(data) -> dict[str, Path]:
    """The three version 3 archives (reused while their data and the code they are built from are unchanged)."""
    folder = data["folder"]
    better = archive(folder / "better", f"--fresh {data['fresh']}")
    return {"better": better,
            "flipped": archive(folder / "flipped", f"--data {data['swapped_corpus']} --fresh {data['flipped']}"),
            "broken": with_fault_handler(better, folder / "broken")}


@pytest.fixture(scope="module")
def stack(export_dir, tmp_path_factory):
    """TorchServe serving v1 (model-control API on, as `make serve MODEL_API=on`) and a private Prometheus
    watching it as `make monitor` does (rules generated from the served versions, a pid file), faster."""
    store = tmp_path_factory.mktemp("model_store")
    shutil.copy(ROOT / "model_store" / "sentiment.mar", store)
    home = tmp_path_factory.mktemp("prometheus")
    ts = LocalTorchServe(store, models="sentiment.mar", config={"enable_model_api": "true"})
    prometheus = None
    try:
        ts.start()
        scrape = ts.metrics.removeprefix("http://")
        subprocess.run([sys.executable, str(ROOT / "deploy" / "prometheus" / "generate_rules.py"), "--server", ts.management,
                        "--model-store", str(store), "--window", WINDOW, "--for", FOR, "--rules-out", str(home / "rules"),
                        "--tests-out", "", "--config-out", str(home / "prometheus.yml"), "--scrape", scrape],
                       check=True, capture_output=True, timeout=120)
        config = yaml.safe_load((home / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        prometheus = Prometheus(config, home).start()
        (home / "prometheus.pid").write_text(str(prometheus.process.pid))
        yield {"ts": ts, "store": store, "prometheus": prometheus, "home": home}
    finally:
        if prometheus is not None:
            prometheus.stop()
        ts.stop()


class Clients:
    """Client traffic while the gate runs: one thread per path posting single texts from `pool`, every answer kept."""

    def __init__(self, ts: LocalTorchServe, pool: list[str], paths=("/predictions/sentiment", "/predictions/sentiment/1")):
        self.ts, self.pool = ts, pool
        self.answers: dict[str, list[str | None]] = {path: [] for path in paths}
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(path,), daemon=True) for path in paths]

    def run(self, path: str) -> None:
        with requests.Session() as session:
            for i in range(10**9):
                if self.stopping.wait(CLIENT_PAUSE):
                    return
                try:
                    response = session.post(self.ts.inference + path, json={"text": self.pool[i % len(self.pool)]}, timeout=30)
                    ok = response.status_code == 200
                    self.answers[path].append(response.json()["model_version"] if ok else None)
                    if not ok:
                        self.errors.append(f"{path}: {response.status_code} {response.text[:200]}")
                except requests.RequestException as error:
                    self.errors.append(f"{path}: {error!r}")

    def wait_for(self, path: str, version: str, count: int = 20, timeout: float = 30) -> None:
        since = len(self.answers[path])
        deadline = time.monotonic() + timeout
        while Counter(self.answers[path][since:])[version] < count:
            assert time.monotonic() < deadline, f"{path}: {Counter(self.answers[path][since:])} in {timeout} s"
            time.sleep(0.05)

    def __enter__(self) -> "Clients":
        for thread in self.threads:
            thread.start()
        self.wait_for("/predictions/sentiment", "1")
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)


@pytest.fixture
def gate(stack, data, tmp_path):
    """`gate(archive, *args)`: the candidate put in the store as sentiment_v3.mar and promote.py run on it under
    client traffic; returns (decision, record, clients). Afterwards v1 is the default and v3 is gone, whatever happened."""
    ts = stack["ts"]

    def run(archive: Path, *args: str):
        shutil.copyfile(archive, stack["store"] / f"sentiment_v{CANDIDATE}.mar")
        argv = ["--candidate", CANDIDATE, "--fresh", str(data["fresh"]), "--bake", str(BAKE),
                "--shadow-batch", str(SHADOW_BATCH), "--shadow-interval", str(SHADOW_INTERVAL),
                "--inference", ts.inference, "--management", ts.management, "--metrics", ts.metrics,
                "--model-store", str(stack["store"]), "--prometheus", stack["prometheus"].url, "--prom-home", str(stack["home"]),
                "--rules-window", WINDOW, "--rules-for", FOR, "--records", str(tmp_path / "promotions"), *args]
        with Clients(ts, [text for text, _ in data["rows"]]) as clients:
            decision, record = promote.main(argv)
            if decision == "promoted":
                clients.wait_for("/predictions/sentiment", CANDIDATE)
            clients.wait_for("/predictions/sentiment/1", "1")
        assert json.loads(Path(record["path"]).read_text()) == {k: v for k, v in record.items() if k != "path"}
        assert "warning" not in record, record["warning"]  # the rules followed every change of the served versions
        print(json.dumps({k: record.get(k) for k in ("decision", "error", "seconds", "score_checks", "bake_checks", "shadow")}, indent=1))
        return decision, record, clients

    yield run
    if ts.admin.describe()[0]["modelVersion"] != "1":
        ts.admin.set_default("1")
    if CANDIDATE in {d["modelVersion"] for d in ts.admin.describe(version="all")}:
        ts.admin.unregister(version=CANDIDATE)


def served(ts) -> tuple[str, list[str]]:
    """The default version and every registered one."""
    return ts.admin.describe()[0]["modelVersion"], sorted(d["modelVersion"] for d in ts.admin.describe(version="all"))


def statuses(results: list[dict]) -> dict[str, str]:
    return {r["name"]: r["status"] for r in results}


def test_checks_are_judged_by_their_comparison_and_missing_data_fails():
    check = promote.Check("x", "q", "<", 0.1, "why")
    assert [promote.judge(check, v)["status"] for v in (0.05, 0.1, 0.2, None, float("nan"))] == ["pass", "fail", "fail", "no data", "no data"]
    later = promote.Check("y", "q", ">=", -1, "why", needs=("rule:a",))
    assert promote.judge(later, None)["status"] == "rule not loaded"  # the rule's change has not landed: reported, not counted
    assert promote.judge(later, None, {"rule:a"})["status"] == "no data"  # loaded, but nothing for the candidate: fails
    assert promote.passed([promote.judge(check, 0.05), promote.judge(later, None)])
    assert not promote.passed([promote.judge(check, 0.05), promote.judge(later, None, {"rule:a"})])
    assert not promote.passed([promote.judge(check, None)])

    def scores(fresh: tuple[int, int], test: tuple[int, int]) -> dict:
        return {name: {"candidate": {"correct": c, "size": n}, "default": {"correct": d, "size": n}}
                for name, (c, d), n in (("fresh_held_out", fresh, 200), ("test_split", test, 1066))}

    assert statuses(promote.score_checks(scores((180, 130), (840, 843)))) == {
        "fresh_held_out_accuracy_gain": "pass", "test_split_accuracy_change": "pass"}  # 3 texts fewer on the test split: within tolerance
    assert statuses(promote.score_checks(scores((180, 130), (820, 843))))["test_split_accuracy_change"] == "fail"
    assert statuses(promote.score_checks(scores((130, 130), (900, 843))))["fresh_held_out_accuracy_gain"] == "fail"


def test_make_promote_runs_the_gate_after_make_monitor():
    run = subprocess.run(["make", "-n", "promote", "CANDIDATE=3", "FRESH=fresh.csv", "BAKE=30"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "generate_rules.py --server" in run.stdout  # make monitor first: Prometheus up, its rules those of the served versions
    assert "promote.py --candidate 3 " in run.stdout and "--fresh fresh.csv" in run.stdout and "--bake 30" in run.stdout


def test_a_missing_precondition_changes_nothing(stack, tmp_path):
    ts = stack["ts"]
    decision, record = promote.main(["--candidate", "9", "--management", ts.management, "--model-store", str(stack["store"]),
                                     "--records", str(tmp_path)])
    assert (decision, promote.EXIT[decision]) == ("nothing done", 2)
    assert "sentiment_v9.mar does not exist" in record["error"] and Path(record["path"]).exists()
    assert served(ts) == ("1", ["1"])


def test_bake_psi_is_the_drift_rules_psi_over_any_window(stack, data):
    """promote.psi_query over the rules' window gives the PSI the drift rules recorded, at the times they were
    evaluated (a scrape landing during an evaluation can differ: most must match)."""
    ts, prometheus = stack["ts"], stack["prometheus"]
    texts = [text for text, _ in data["rows"]]
    for start in range(0, 640, 64):
        assert requests.post(ts.inference + "/predictions/sentiment/1", json={"texts": texts[start : start + 64]}, timeout=30).ok
        time.sleep(0.5)
    v1 = 'ModelName="sentiment",ModelVersion="1"'
    deadline = time.monotonic() + 30  # rule evaluations are sparse on 2 busy cores
    while len(recorded := (prometheus.query(f"sentiment:probability_psi:{WINDOW}{{{v1}}}[10s]") or [{"values": []}])[0]["values"]) < 4:
        assert time.monotonic() < deadline, recorded
        time.sleep(1)
    pairs = [(float(value), float(drift_report.query(prometheus.url, promote.psi_query(v1, WINDOW), at)[0]["value"][1]))
             for at, value in recorded]
    assert sum(abs(a - b) < 1e-6 for a, b in pairs) >= len(pairs) - 1 >= 2, pairs


def test_candidate_trained_on_flipped_labels_is_rolled_back_on_its_scores(candidates, gate, stack):
    decision, record, clients = gate(candidates["flipped"])
    assert (decision, record["error"]) == ("rolled back", None)
    assert statuses(record["score_checks"]) == {"fresh_held_out_accuracy_gain": "fail", "test_split_accuracy_change": "fail"}
    assert record["scores"]["test_split"]["candidate"]["accuracy"] < 0.5 < record["scores"]["test_split"]["default"]["accuracy"]
    assert "bake_checks" not in record  # rejected before any traffic reached it
    assert served(stack["ts"]) == ("1", ["1"]) and record["default_after"] == "1"
    assert not clients.errors, clients.errors[:5]
    assert all(set(answers) == {"1"} for answers in clients.answers.values())


def test_candidate_breaking_on_live_traffic_is_rolled_back_by_prometheus(candidates, gate, data, stack):
    """The fault-injecting handler scores as well as the better candidate (no labelled text breaks it), but
    one shadow text in 50 does: the analysis sees its inference errors and rolls it back."""
    decision, record, clients = gate(candidates["broken"], "--shadow", str(data["breaking_traffic"]))
    assert (decision, record["error"]) == ("rolled back", None)
    assert statuses(record["score_checks"]) == {"fresh_held_out_accuracy_gain": "pass", "test_split_accuracy_change": "pass"}
    checks = {r["name"]: r for r in record["bake_checks"]}
    assert checks["inference_errors"]["status"] == "fail" and checks["inference_errors"]["value"] > 0.01, checks["inference_errors"]
    assert checks["traffic"]["status"] == "pass"
    assert set(record["shadow"]["requests_by_status"]) == {"200", "500"}  # a request holding a breaking text fails alone
    assert served(stack["ts"]) == ("1", ["1"]) and record["default_after"] == "1"
    assert not clients.errors, clients.errors[:5]
    assert all(set(answers) == {"1"} for answers in clients.answers.values())


def test_better_candidate_is_promoted(candidates, gate, stack):
    decision, record, clients = gate(candidates["better"])
    assert (decision, record["error"]) == ("promoted", None)
    assert statuses(record["score_checks"]) == {"fresh_held_out_accuracy_gain": "pass", "test_split_accuracy_change": "pass"}
    checks = statuses(record["bake_checks"])
    assert checks.pop("estimated_accuracy") in ("pass", "rule not loaded")  # its rules come with calibration (issue 19, part 2)
    assert checks == {"traffic": "pass", "inference_errors": "pass", "latency_mean_ms": "pass", "probability_drift": "pass"}
    assert record["shadow"]["requests_by_status"] == {"200": record["shadow"]["texts_sent"] // SHADOW_BATCH}
    assert served(stack["ts"]) == ("3", ["1", "3"]) and record["default_after"] == "3"
    assert stack["ts"].admin.ready_workers(version="3") == record["default_workers"]
    assert not clients.errors, clients.errors[:5]
    unversioned = clients.answers["/predictions/sentiment"]
    switch = unversioned.index("3")
    assert set(unversioned[:switch]) == {"1"} and set(unversioned[switch:]) == {"3"}  # v1 until set-default, v3 from then on
    assert set(clients.answers["/predictions/sentiment/1"]) == {"1"}
