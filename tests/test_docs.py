"""Every page of docs/, walked in order on a fresh clone, as a newcomer runs it (issue 29).

tests/test_readme.py checks what the commands answer and that every command names what exists; this
walk runs them: `git clone` of the committed tree into a temp folder (the .venv linked, build/v1's
trained model copied so that nothing retrains; the export and the archive are built there), its own
TMPDIR and free ports, `make serve` as README says, then every line of every page's ```bash blocks, in
README's order of the pages, with the 8080-8082 URLs rewritten to the walk's ports. What is not run is
listed in SKIPPED with the reason, and the walk's record says it was skipped. After the last page,
`make stop` (monitoring.md's), and the clone must be as clean as git found it.
"""

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sentiment.ops.torchserve import ROOT, free_port
from test_readme import PAGES, TEXT, blocks, without_comments

# every port `make serve` binds, gRPC too: a fixed one collides with a parallel test's server (test_make_serve uses the defaults when free)
PORTS = {"INFERENCE_PORT": 8080, "MANAGEMENT_PORT": 8081, "METRICS_PORT": 8082, "GRPC_INFERENCE_PORT": 7070, "GRPC_MANAGEMENT_PORT": 7071}
STEP_TIMEOUT = 120  # s; the slowest step, Spark, takes ~20-30
OLD = 946684800  # 2000-01-01: the clone's files older than the copied build, so that make rebuilds nothing it need not

TRANSFORMER = "needs the full transformer (build/v2: ~25 min of fine-tuning); tests/test_readme.py runs the version flow on the quick one"
MEASUREMENT = "a measurement of minutes that rewrites bench/results/ (its page gives its duration)"
PROMETHEUS = ("make promote's flow: needs make monitor's Prometheus on the fixed port 9090 (tests/test_monitoring.py and "
              "tests/test_promote.py run it on free ports)")
# (pattern, reason): the first that a command matches says why the walk does not run it
SKIPPED = [
    (r"VERSION=2|sentiment_v2|/sentiment/2\b", TRANSFORMER),
    (r"^kubectl ", "needs a Kubernetes cluster"),
    (r"^make test\b", "the whole suite, which this test is part of"),
    (r"^make (monitor|drift-report|promote)\b|^make archive VERSION=3 |--version 3\b", PROMETHEUS),
    (r"^make (bench|overload|soak|chaos)\b|bench/run\.py|bench/batch_bench\.py|scripts/calibration\.py", MEASUREMENT),
    (r"^make fuzz\b", "minutes of Hypothesis against its own TorchServe (make test replays the examples it saved)"),
    (r"^make serve\b", "the walk's server, started by README's `make serve`, is up"),
    (r"^make stop\b", "run once, after the last page"),
]
# run, but they need the full transformer: without build/v2 they must fail with one line that says what builds it
NEEDS_V2 = r"scripts/(record_models|long_reviews)\.py"


def bash_lines(page: str) -> list[str]:
    """The page's command lines, as written (comments too)."""
    return [line.strip() for language, body in blocks(without_comments(TEXT[page])) if language == "bash"
            for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]


def uncommented(line: str) -> str:
    return re.sub(r"\s+#.*$", "", line)


@dataclass
class Step:
    page: str
    line: str  # as the page writes it; `command` is without its comment
    command: str = ""
    skipped: str = ""
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0


class Clone:
    """A fresh clone of HEAD with its own TMPDIR and ports; `run` runs a command line as written in it."""

    def __init__(self, tmp: Path):
        home = tmp / "walk"
        self.root = home / "main"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(self.root)], check=True)
        (home / "shared").symlink_to(ROOT.parent / "shared")  # train.DATA_DIR: ../shared/data, as beside the checkout
        (self.root / ".venv").symlink_to(ROOT / ".venv")
        with (self.root / ".git" / "info" / "exclude").open("a") as exclude:
            exclude.write("/.venv\n")  # the link (.gitignore's .venv/ is the folder a newcomer's make install makes)
        for path in self.tracked():
            os.utime(self.root / path, (OLD, OLD), follow_symlinks=False)
        shutil.copytree(ROOT / "build" / "v1", self.root / "build" / "v1", ignore=shutil.ignore_patterns("export"))
        self.tmpdir = home / "tmp"
        self.tmpdir.mkdir()
        self.ports = {name: free_port() for name in PORTS}
        # TMPDIR: TorchServe's pid file; TEMP: the JVM's temp dir, where it unpacks the archives (TS_MODELS)
        self.env = {**os.environ, "TMPDIR": str(self.tmpdir), "TEMP": str(self.tmpdir)}

    def tracked(self) -> list[str]:
        return subprocess.run(["git", "ls-files"], cwd=self.root, capture_output=True, text=True, check=True).stdout.split()

    def status(self) -> str:
        """What a results script's dirty-tree check sees (bench/provenance.py: bench/results/ is its output, not counted)."""
        return subprocess.run(["git", "status", "--porcelain", "--", ".", ":!bench/results"], cwd=self.root, capture_output=True,
                              text=True, check=True).stdout

    def rewrite(self, command: str) -> str:
        """The walk's ports: in URLs, and as the Makefile's port variables of a make command."""
        for name, default in PORTS.items():
            command = command.replace(f"http://127.0.0.1:{default}", f"http://127.0.0.1:{self.ports[name]}")
        if command.startswith("make "):
            command += "".join(f" {name}={port}" for name, port in self.ports.items())
        return command

    def run(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", self.rewrite(command)], cwd=self.root, env=self.env, capture_output=True,
                              text=True, timeout=timeout)


def run_step(clone: Clone, step: Step, timeout: float = STEP_TIMEOUT) -> Step:
    """Run it; a command past `timeout` is a failed step (a long command belongs in SKIPPED), not a stopped walk."""
    started = time.perf_counter()
    try:
        result = clone.run(step.command, timeout)
        step.returncode, step.stdout, step.stderr = result.returncode, result.stdout, result.stderr
    except subprocess.TimeoutExpired:
        step.returncode, step.stderr = -1, f"still running after {timeout} s: a long command belongs in SKIPPED"
    step.seconds = round(time.perf_counter() - started, 1)
    return step


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """`make serve`, then every page's commands in order, then `make stop`; the clone and its record."""
    clone = Clone(tmp_path_factory.mktemp("docs"))
    served = run_step(clone, Step("README.md", "make serve", "make serve"), timeout=300)
    steps = []
    try:
        assert served.returncode == 0, served.stdout[-3000:] + served.stderr[-3000:]
        for page in PAGES:
            for command in bash_lines(page):
                step = Step(page, command, uncommented(command))
                step.skipped = next((reason for pattern, reason in SKIPPED if re.search(pattern, step.command)), "")
                steps.append(step if step.skipped else run_step(clone, step))
        yield clone, served, steps
    finally:
        clone.run("make stop")  # again, if the test of make stop did not run; it exits 0 when nothing runs


def ran(steps: list[Step]) -> list[Step]:
    return [s for s in steps if not s.skipped]


def test_every_page_command_runs_on_a_fresh_clone(walk):
    clone, served, steps = walk
    assert "TorchServe is healthy" in served.stdout
    failed = [(s.page, s.command, s.returncode, s.stderr[-1500:]) for s in ran(steps)
              if s.returncode != 0 and not re.search(NEEDS_V2, s.command)]
    assert not failed, failed
    curls = [s for s in ran(steps) if s.command.startswith("curl ")]
    assert len(curls) >= 8 and all(s.stdout.strip() for s in curls)
    run_pages = {s.page for s in ran(steps)}
    assert {"docs/batch.md", "docs/explanations.md", "docs/kserve.md", "docs/api.md", "docs/models.md"} <= run_pages
    # only what needs the transformer, a cluster or minutes is skipped, and the record says so
    assert all(s.skipped for s in steps if re.search(SKIPPED[0][0], s.command))


def test_the_walk_stays_fast(walk):
    """The whole suite's budget is minutes: the walk's commands (server start excluded) within 120 s on 2 busy cores (~55 s when they are not)."""
    _, served, steps = walk
    print(f"\nmake serve {served.seconds} s; " + "; ".join(f"{s.seconds} s {s.command[:60]}" for s in ran(steps)))
    assert sum(s.seconds for s in ran(steps)) < 120, sorted(((s.seconds, s.command) for s in ran(steps)), reverse=True)[:5]


def test_scripts_that_need_the_transformer_say_so_in_one_line(walk):
    """Issue 29.3: on a clone with only v1 built, they fail with one line naming the file and what builds it."""
    clone, _, steps = walk
    assert not (clone.root / "build" / "v2").exists()
    needing = [s for s in ran(steps) if re.search(NEEDS_V2, s.command)]
    assert len(needing) == 2, [s.command for s in needing]
    for step in needing:
        assert step.returncode == 1 and "Traceback" not in step.stderr, step.stderr[-2000:]
        (line,) = step.stderr.strip().splitlines()
        assert "build/v2/" in line and "VERSION=2" in line, line


def test_the_pages_name_inputs_that_ship(walk):
    """Issue 29.2: every input file a page's command reads is in the clone (samples/), so the commands ran."""
    clone, _, steps = walk
    read = {w for s in steps for w in re.findall(r"[\w./-]+\.(?:csv|jsonl)\b", s.command) if not w.startswith(("scored", "explained"))}
    assert read and all(w.startswith("samples/") for w in read), read
    assert all((clone.root / w).is_file() for w in read)
    scored = clone.root / "scored.jsonl"
    assert len(scored.read_text().splitlines()) == len((clone.root / "samples" / "reviews.jsonl").read_text().splitlines())


def test_the_walk_leaves_the_clone_clean_and_stopped(walk):
    """Issue 29.1 and 29.7: the commands' outputs are git-ignored (a results script would refuse a dirty
    tree), and `make stop` ends the server and removes the archives TorchServe unpacked for it."""
    clone, _, _ = walk
    assert clone.status() == "", clone.status()
    assert all((clone.root / name).exists() for name in ("scored.parquet", "scored.csv", "explained.jsonl", "scored-spark.parquet"))


def test_spark_stays_on_loopback_and_never_replaces_a_file(walk):
    """Issue 29.6: batch.md's Spark command logs no move off loopback; aimed at `make batch`'s scored.parquet it refuses."""
    clone, _, steps = walk
    (spark,) = [s for s in ran(steps) if "sentiment.ops.spark_predict" in s.command]
    assert "loopback" not in spark.stderr and (clone.root / "scored-spark.parquet" / "_SUCCESS").exists(), spark.stderr[-2000:]
    before = (clone.root / "scored.parquet").read_bytes()
    refused = clone.run(".venv/bin/python -m sentiment.ops.spark_predict samples/reviews.csv scored.parquet")
    assert refused.returncode == 1 and "exists and is a file" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    assert (clone.root / "scored.parquet").read_bytes() == before


def test_missing_input_is_one_line(walk):
    clone, _, _ = walk
    for command in (".venv/bin/python -m sentiment.ops.batch_predict reviews.csv scored.csv", ".venv/bin/python -m sentiment.ops.spark_predict reviews.csv scored-x.parquet"):
        result = clone.run(command)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert result.stderr.strip().splitlines()[-1].startswith("reviews.csv: no such file"), result.stderr


def test_refused_batch_bench_leaves_no_temp_folder(walk):
    """Issue 29.1: the batch bench refuses a dirty tree before it makes its temp folder."""
    clone, _, _ = walk
    note = clone.root / "notes.txt"
    note.write_text("a newcomer's notes\n")
    try:
        result = clone.run(".venv/bin/python bench/batch_bench.py --http")
    finally:
        note.unlink()
    assert result.returncode == 1 and "dirty" in result.stderr, result.stderr[-2000:]
    assert not list(clone.tmpdir.glob("batch-bench-*"))


def test_make_promote_exits_as_its_page_says(walk):
    """Issue 29.4: make turns any failed recipe into its status 2, so the page promises 0 promoted and 2
    otherwise, and the last line says which. Run for real on the walk's server with a candidate that does
    not exist (`-o monitor`: without starting Prometheus on the fixed port 9090; the gate stops first)."""
    clone, _, _ = walk
    page = TEXT["docs/versions-and-rollout.md"]
    assert re.search(r"`make promote` exits 0 when the candidate is promoted and 2 otherwise", page)
    assert not re.search(r"make promote[^\n]*exit 0 promoted, 1 rolled back", page)
    result = clone.run("make -o monitor promote CANDIDATE=9")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-2].startswith("make promote: nothing done (sentiment/ops/promote.py exit 2"), result.stderr[-2000:]


def test_make_stop_removes_what_torchserve_unpacked(walk):
    clone, _, _ = walk
    models = clone.tmpdir / "models"
    assert models.is_dir() and list(models.iterdir())  # the running server's unpacked sentiment.mar
    stopped = clone.run("make stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert list(models.iterdir()) == []
    assert clone.status() == ""


def test_measurements_say_how_long_they_take():
    """Issue 29.5: each measurement that the walk leaves out, on the pages of the benchmarks and batch
    scoring, says on its line how long it takes (`bench/run.py --quick`, a "smoke test", took 349 s)."""
    lines = [line for page in ("docs/benchmark.md", "docs/batch.md") for line in bash_lines(page)
             if next((reason for pattern, reason in SKIPPED if re.search(pattern, uncommented(line))), "") == MEASUREMENT]
    assert len(lines) >= 4, lines
    for line in lines:
        assert re.search(r"#.*\d+(-\d+)? ?(s|min)\b", line), f"no duration: {line}"


def test_numbers_say_which_run_and_how_runs_vary():
    """Issue 29.5: the worker's memory and the batch throughput, which a later run measured well off the
    page's numbers, say which run they are from and how much another run got."""
    benchmark, batch = TEXT["docs/benchmark.md"], TEXT["docs/batch.md"]
    assert re.search(r"303 MB before the first request\. Runs differ by tens of MB.*357 MB", " ".join(benchmark.split()))
    assert re.search(r"12,297 rows/s.*vary.*8,105 rows/s", " ".join(batch.split()))
    assert "~2 minutes" not in (ROOT / "bench" / "batch_bench.py").read_text()


def test_scripts_without_the_dev_dependencies_say_make_install_dev():
    """Issue 29.3: after `make serve` alone (no dev dependencies), models.md's record_models.py ended in
    `No module named 'requests'`. Run without site-packages (`-S`), it names the make target instead."""
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-S", "scripts/record_models.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == \
        ["record_models.py: needs the dev dependencies (no module 'requests'): run `make install-dev`"], result.stderr


def test_sample_fresh_labels_are_the_promote_tests_own():
    """versions-and-rollout.md: with samples/fresh.csv a candidate passes the scores and is baked; that is
    tests/test_promote.py's better candidate (trained on the same rows), promoted after its bake."""
    import csv

    from test_promote import fresh_labels

    with (ROOT / "samples" / "fresh.csv").open(newline="", encoding="utf-8") as f:
        rows = [(row["text"], int(row["label"])) for row in csv.DictReader(f)]
    assert rows == fresh_labels()


def test_make_clean_removes_unpacked_sentiment_archives_no_server_uses(walk):
    """Issue 29.7: what TorchServe unpacked for an earlier server (killed, say, so make stop never ran) goes
    with `make clean`; another model's folder stays."""
    clone, _, _ = walk
    models = clone.tmpdir / "models"
    for name, model in (("left-over", "sentiment"), ("other", "someone-elses")):
        (models / name / "MAR-INF").mkdir(parents=True)
        (models / name / "MAR-INF" / "MANIFEST.json").write_text(f'{{"model": {{"modelName": "{model}"}}}}')
    cleaned = clone.run("make clean")
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert sorted(p.name for p in models.iterdir()) == ["other"]
