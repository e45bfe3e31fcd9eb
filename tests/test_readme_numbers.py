"""README's numbers come from committed results files made on a clean tree, and agree with them."""

import json
import re
import sys

import pytest

from local_server import ROOT

README = (ROOT / "README.md").read_text()
CITATION = re.compile(r"`(bench/results/[\w.-]+\.json)`, commit ([0-9a-f]{7,40}), clean tree")


def results(name: str) -> dict:
    return json.loads((ROOT / name).read_text())


def test_readme_cites_results_files():
    assert {"bench/results/models.json", "bench/results/long_reviews.json", "bench/results/results.json",
            "bench/results/results_v2.json"} <= {
        path for path, _ in CITATION.findall(README)}


@pytest.mark.parametrize("path, commit", sorted(set(CITATION.findall(README))))
def test_each_cited_results_file_comes_from_that_commit_on_a_clean_tree(path, commit):
    provenance = results(path)["provenance"]
    assert provenance["git_commit"].startswith(commit), (path, provenance["git_commit"])
    assert provenance["git_clean"] is True and not provenance["allow_dirty"], (path, provenance)


def table_row(label: str) -> list[str]:
    (line,) = [line for line in README.splitlines() if line.startswith(f"| {label} |")]
    return [cell.strip(" *") for cell in line.strip("|").split("|")[1:]]


def test_model_table_is_models_json():
    versions = results("bench/results/models.json")["versions"]
    assert table_row("held-out test accuracy (n = 1,066)") == [f"{versions[v]['test']['accuracy']:.4f}" for v in ("1", "2")]
    assert table_row("test ROC AUC") == [f"{versions[v]['test']['roc_auc']:.4f}" for v in ("1", "2")]
    served = [f"{versions[v]['served_test']['accuracy']:.4f} / {versions[v]['served_test']['roc_auc']:.4f}" for v in ("1", "2")]
    assert table_row("served through TorchServe (`evaluate_served`), accuracy / AUC") == served


def test_long_review_numbers_are_long_reviews_json():
    for name, measured in results("bench/results/long_reviews.json")["strategies"].items():
        pair = re.escape(f"{measured['accuracy']:.3f}") + r"[^\d]{1,20}" + re.escape(f"{measured['roc_auc']:.3f}")
        assert re.search(pair, README), (name, measured)


@pytest.mark.parametrize("name", ["bench/results/results.json", "bench/results/results_v2.json"])
def test_benchmark_tables_are_the_results_files(name):
    sys.path.insert(0, str(ROOT / "bench"))
    from report import readme_table

    assert readme_table(results(name)) in README, name
