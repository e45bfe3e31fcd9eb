"""The numbers in README.md and docs/*.md come from committed results files made on a clean tree, and
agree with them.

Every citation, "`bench/results/X.json`, commit abc1234, clean tree" (or "... (commit abc1234, clean
tree)"), in every page names a file whose provenance is that commit on a clean tree; every committed
results file is cited somewhere; and each table or figure a page quotes from a results file is
checked against that file where the page shows it. HTML comments (the `<!-- TODO(issue N): ... -->`
placeholders) are not read.
"""

import json
import re
import subprocess
import sys

import pytest

from sentiment.serving import drift
from sentiment.ops.torchserve import ROOT

PAGES = ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
TEXT = {page: re.sub(r"<!--.*?-->", "", (ROOT / page).read_text(), flags=re.S) for page in PAGES}
# The whitespace between words may be a line break.
CITATION = re.compile(r"`(bench/results/[\w.-]+\.json)`(?:,|\s\()\s*commit\s+([0-9a-f]{7,40}),\s+clean\s+tree")
CITING = re.compile(r"`(bench/results/[\w.-]+\.json)`(?:,|\s\()\s*commit\b")  # what starts a citation
CITATIONS = sorted({(page, path, commit) for page in PAGES for path, commit in CITATION.findall(TEXT[page])})


def results(name: str) -> dict:
    return json.loads((ROOT / name).read_text())


def cited(page: str) -> set[str]:
    return {path for path, _ in CITATION.findall(TEXT[page])}


def test_every_committed_results_file_is_cited():
    committed = subprocess.run(["git", "ls-files", "bench/results/*.json"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    assert {"bench/results/models.json", "bench/results/results.json", "bench/results/results_v2.json"} <= set(committed)
    uncited = set(committed) - {path for _, path, _ in CITATIONS}
    assert not uncited, f"committed results files no page cites: {sorted(uncited)}"


def test_every_citation_is_whole():
    """A citation that names a commit also says "clean tree": a figure from a dirty tree is not quoted."""
    for page in PAGES:
        for match in CITING.finditer(TEXT[page]):
            assert CITATION.match(TEXT[page], match.start()), f"{page}: {TEXT[page][match.start():match.start() + 90]!r}"


@pytest.mark.parametrize("page, path, commit", CITATIONS)
def test_each_cited_results_file_comes_from_that_commit_on_a_clean_tree(page, path, commit):
    provenance = results(path)["provenance"]
    assert provenance["git_commit"].startswith(commit), (page, path, provenance["git_commit"])
    assert provenance["git_clean"] is True and not provenance["allow_dirty"], (page, path, provenance)


def table_row(page: str, label: str) -> list[str]:
    (line,) = [line for line in TEXT[page].splitlines() if line.startswith(f"| {label} |")]
    return [cell.strip(" *") for cell in line.strip("|").split("|")[1:]]


def head_to_head(name: str, server: str, body: str, concurrency: int) -> dict:
    (row,) = [r for r in results(name)["head_to_head"] if (r["server"], r["body"], r["concurrency"]) == (server, body, concurrency)]
    return row


BENCH = {"1": "bench/results/results.json", "2": "bench/results/results_v2.json"}


def test_readme_model_table_is_the_results_files():
    versions = results("bench/results/models.json")["versions"]
    assert {"bench/results/models.json", *BENCH.values()} <= cited("README.md")
    assert table_row("README.md", "held-out test accuracy (n = 1,066)") == [f"{versions[v]['test']['accuracy']:.4f}" for v in "12"]
    assert table_row("README.md", "test ROC AUC") == [f"{versions[v]['test']['roc_auc']:.4f}" for v in "12"]
    assert table_row("README.md", "p50 ms, one client, short review, through TorchServe") == \
        [f"{head_to_head(BENCH[v], 'torchserve', 'short', 1)['p50_ms']:.1f}" for v in "12"]
    assert table_row("README.md", "req/s through TorchServe, 32 clients, mixed reviews") == \
        [f"{head_to_head(BENCH[v], 'torchserve', 'mix', 32)['req_per_s']:,.0f}" for v in "12"]
    assert table_row("README.md", "`.mar` archive") == [f"{versions[v]['archive_mb']} MB" for v in "12"]


def test_models_table_is_models_json():
    page, versions = "docs/models.md", results("bench/results/models.json")["versions"]
    assert "bench/results/models.json" in cited(page)
    assert table_row(page, "held-out test accuracy (n = 1,066)") == [f"{versions[v]['test']['accuracy']:.4f}" for v in "12"]
    assert table_row(page, "test ROC AUC") == [f"{versions[v]['test']['roc_auc']:.4f}" for v in "12"]
    assert table_row(page, "validation accuracy") == [f"{versions[v]['validation']['accuracy']:g}" for v in "12"]
    served = [f"{versions[v]['served_test']['accuracy']:.4f} / {versions[v]['served_test']['roc_auc']:.4f}" for v in "12"]
    assert table_row(page, "served through TorchServe (`evaluate_served`), accuracy / AUC") == served
    training = table_row(page, "training time, 2 CPU cores (shared with other work)")
    assert [t.split(" s")[0] for t in training] == [f"{versions[v]['train_seconds']:,.0f}" for v in "12"]
    trained = versions["2"]["trained_for"]
    assert f"({trained['steps']} steps, best at {trained['best_step']})" in training[1]
    sizes = table_row(page, "`model.pt` / `model.onnx` / featuriser file")
    for cell, (v, featuriser) in zip(sizes, (("1", "vocab.json"), ("2", "tokenizer.json"))):
        mb = versions[v]["artifact_mb"]
        assert cell.startswith(f"{mb['model.pt']} / {mb['model.onnx']} / {mb[featuriser]} MB ({featuriser}"), cell
    assert table_row(page, "`.mar`") == [f"{versions[v]['archive_mb']} MB" for v in "12"]


def test_long_review_numbers_are_long_reviews_json():
    page = "docs/models.md"
    assert "bench/results/long_reviews.json" in cited(page)
    for name, measured in results("bench/results/long_reviews.json")["strategies"].items():
        pair = re.escape(f"{measured['accuracy']:.3f}") + r"[^\d]{1,20}" + re.escape(f"{measured['roc_auc']:.3f}")
        assert re.search(pair, TEXT[page]), (name, measured)
        assert re.search(rf"\b{measured['ms_per_review']:.0f}\b", TEXT[page]), (name, measured)


def test_served_numbers_in_the_rollout_are_models_json():
    page, versions = "docs/versions-and-rollout.md", results("bench/results/models.json")["versions"]
    assert "bench/results/models.json" in cited(page)
    v1, v2 = (versions[v]["served_test"] for v in "12")
    assert f"v1 accuracy {v1['accuracy']:.4f} / AUC {v1['roc_auc']:.4f}, v2 {v2['accuracy']:.4f} / {v2['roc_auc']:.4f}" in TEXT[page]


@pytest.mark.parametrize("name", BENCH.values())
def test_benchmark_tables_are_the_results_files(name):
    sys.path.insert(0, str(ROOT / "bench"))
    from report import readme_table

    assert name in cited("docs/benchmark.md")
    assert readme_table(results(name)) in TEXT["docs/benchmark.md"], name


@pytest.mark.parametrize("version", BENCH)
def test_benchmark_targets_are_the_results_files(version):
    """Each target's measured ratio (or ms, or MB) as results["targets"] has it, in that version's section."""
    text = TEXT["docs/benchmark.md"].split(f"## v{version} (", 1)[1].split("\n## ", 1)[0]
    checks = results(BENCH[version])["targets"]["checks"]
    assert checks
    for name, check in checks.items():
        ratio = check["ratio"]
        shown = f"{ratio:.1f} ms" if name.startswith("p50 ms") else f"{ratio:.0f} MB" if "RSS MB" in name else f"{ratio:.2f}x"
        assert shown in text, (name, check, shown)


def test_grid_trade_off_table_is_results_json():
    points = [p for p in results(BENCH["1"])["points"] if (p.get("grid") or p.get("sweep")) and p["body"] == "mix"
              and p["config"].get("workers") == 2]

    def point(batch: int, delay: int | None, concurrency: int) -> dict:
        (found,) = [p for p in points if p["config"]["batch_size"] == batch and p["concurrency"] == concurrency
                    and (delay is None or p["config"]["max_batch_delay_ms"] == delay)]
        return found

    rows = re.findall(r"^\| \**batch (\d+)(?:, (\d+) ms)?[^|]*\| ([\d.]+) \| ([\d,]+) \|$", TEXT["docs/benchmark.md"], flags=re.M)
    assert len(rows) >= 5
    for batch, delay, p50, rps in rows:
        delay = int(delay) if delay else None
        assert p50 == f"{point(int(batch), delay, 1)['latency_ms']['p50']:.1f}", (batch, delay)
        assert rps == f"{point(int(batch), delay, 32)['throughput_rps']:,.0f}", (batch, delay)


def test_worker_memory_is_worker_memory_json():
    page, measured = "docs/benchmark.md", results("bench/results/worker_memory.json")
    assert "bench/results/worker_memory.json" in cited(page)
    after, added = measured["rss_mb_after"], measured["added_mb"]
    text = " ".join(TEXT[page].split())
    assert f"`import torch` {after['import torch']:.0f} MB" in text
    assert f"TorchServe's worker modules +{added['TorchServe worker modules']:.0f} MB" in text
    for step, shown in (("handler modules", f"+{added['handler modules']}"), ("vocabulary index", f"+{added['vocabulary index']:.0f}"),
                        ("TorchScript core", f"+{added['TorchScript core']}"), ("explainer", f"+{added['explainer']}")):
        assert shown in text, (step, shown)
    assert f"{after['explainer']:.0f} MB before the first request" in text


def test_soak_and_chaos_table_is_their_results():
    page = "docs/reliability.md"
    for label, name in (("`make soak`", "bench/results/soak.json"), ("`make chaos`", "bench/results/chaos.json")):
        measured = results(name)
        assert name in cited(page)
        row = table_row(page, label)
        assert row[:5] == [f"{measured['sent']:,}", f"{measured['answered']:,}", f"{measured['errors']:,}",
                           f"{measured['ok_per_s']:,.0f}", f"{measured['latency_ms']['p99']:.1f}"], (label, row)
        frontend = {round(s["t_s"]): s["frontend_mb"] for s in measured["rss"]["samples"]}
        assert row[5] == f"{frontend[3]:.0f} / {frontend[23]:.0f} / {measured['rss']['end']['frontend_mb']:.0f}", (label, row)
        assert row[6] == f"{measured['rss']['start']['workers_mb']:.0f} / {measured['rss']['end']['workers_mb']:.0f}", (label, row)


def test_batch_numbers_are_batch_json():
    page, measured = "docs/batch.md", results("bench/results/batch.json")
    assert "bench/results/batch.json" in cited(page)
    text = " ".join(TEXT[page].split())
    rates = measured["rows_per_s"]
    assert f"in the CLI's process {rates['cli']:,.0f} rows/s" in text and f"{measured['cli']['wall_s']} s wall" in text
    assert f"Spark local {rates['spark_local_warm']:,.0f} rows/s once warm ({rates['spark_local_cold']:,.0f} for its first job" in text
    assert f"the HTTP endpoint {rates['http']:,.0f} rows/s" in text
    assert f"on {measured['rows']:,} rows" in text


def test_monitoring_latency_thresholds_are_4x_the_measured_p50():
    page = "docs/monitoring.md"
    text = " ".join(TEXT[page].split())
    for version, name in BENCH.items():
        assert name in cited(page)
        p50 = head_to_head(name, "torchserve", "mix", 32)["p50_ms"]
        assert f"v{version} {4 * p50:,.0f} ms (p50 {p50:.1f} ms, `{name}`" in text, (version, p50)


def test_monitoring_drift_thresholds_are_drift_py():
    """Every statement of a drift threshold in monitoring.md, in the numbers, the alert table and the reasoning."""
    text = " ".join(TEXT["docs/monitoring.md"].split())
    assert f"PSI {drift.PSI_WARNING} (warning) and {drift.PSI_CRITICAL} (critical)" in text
    assert set(re.findall(r"> (0\.\d+) / > (0\.\d+)", text)) == {(str(drift.PSI_WARNING), str(drift.PSI_CRITICAL))}
    tolerances = re.findall(r"more than (0\.\d+) from the reference", text)
    assert len(tolerances) >= 2 and set(tolerances) == {f"{drift.POSITIVE_RATE_TOLERANCE:.2f}"}
    counts = re.findall(r"(?:fewer than|>=) (\d+) predictions", text)
    assert len(counts) >= 3 and set(counts) == {str(drift.MIN_COUNT)}


def test_monitoring_estimated_accuracy_numbers_are_drift_py_and_the_signature(signature):
    """The reference monitoring.md states is v1's signature as export builds it (not a results file), and
    the estimated accuracy's margin is sentiment/serving/drift.py's for that reference."""
    text = " ".join(TEXT["docs/monitoring.md"].split())
    reference = signature.reference
    assert (f"{reference['n']:,} reviews, {reference['positive_rate'] * 100:.1f} % predicted positive, estimated accuracy "
            f"{reference['estimated_accuracy']:.3f}, mean {reference['mean_kchars'] * 1000:.0f} characters") in text
    assert f"for v1 a margin of {drift.estimated_accuracy_margin(reference):.3f}" in text
    zs = re.findall(r"more than (\d+\.\d+) (?:standard errors|of those)", text)
    assert len(zs) >= 2 and set(zs) == {str(drift.ESTIMATED_ACCURACY_Z)}
