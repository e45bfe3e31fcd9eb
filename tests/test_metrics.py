"""Continued evaluation: the handler's Prometheus metrics count exactly what was served, and
evaluate.py scores the served model exactly as train.evaluate scores the exported one."""

import json
import re
import subprocess
import sys
import time

import pytest
import requests
import torch

import evaluate
import train
from local_server import ROOT

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

POSITIVE = [
    "A gorgeous, moving film with a wonderful cast and a smart, funny script.",
    "One of the most beautiful and touching movies of the year; a triumph.",
    "A delightful, warm and witty comedy that is a joy from start to finish.",
]
NEGATIVE = ["A dull, lifeless mess: boring, predictable and badly acted."]

SAMPLE = re.compile(r'^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(server) -> dict[tuple[str, frozenset], float]:
    """/metrics as {(sample name, {label: value}): value}."""
    response = requests.get(server.metrics + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    samples = {}
    for line in response.text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(LABEL.findall(match["labels"] or ""))
            samples[(match["name"], labels)] = float(match["value"])
    return samples


def total(samples: dict, name: str, **labels) -> float:
    """Sum of the samples named `name` whose labels include `labels` (0 if there is none yet)."""
    wanted = set(labels.items())
    return sum(value for (sample, found), value in samples.items() if sample == name and wanted <= found)


def test_prediction_metrics_count_exactly_what_was_served(server):
    watched = {
        "positive": lambda s: total(s, "SentimentPredictions", ModelName="sentiment", Label="positive"),
        "negative": lambda s: total(s, "SentimentPredictions", ModelName="sentiment", Label="negative"),
        "wrong_type": lambda s: total(s, "SentimentRequestErrors", ModelName="sentiment", Kind="wrong_type"),
        "missing_text": lambda s: total(s, "SentimentRequestErrors", ModelName="sentiment", Kind="missing_text"),
        "probability_count": lambda s: total(s, "SentimentProbability_count", ModelName="sentiment"),
        "probability_sum": lambda s: total(s, "SentimentProbability_sum", ModelName="sentiment"),
        "kchars_count": lambda s: total(s, "SentimentInputKiloChars_count", ModelName="sentiment"),
        "kchars_sum": lambda s: total(s, "SentimentInputKiloChars_sum", ModelName="sentiment"),
    }
    before = {key: read(scrape(server)) for key, read in watched.items()}

    url = server.inference + "/predictions/sentiment"
    served = [requests.post(url, json={"text": POSITIVE[0]}, timeout=30),
              requests.post(url, json={"texts": POSITIVE[1:] + NEGATIVE}, timeout=30)]
    bad = [requests.post(url, json={"text": 42}, timeout=30),
           requests.post(url, json={"review": "great"}, timeout=30)]
    assert [r.status_code for r in served] == [200, 200], [r.text for r in served]
    assert [r.status_code for r in bad] == [400, 400], [r.text for r in bad]
    probabilities = [served[0].json()["probability"]] + [p["probability"] for p in served[1].json()["predictions"]]
    assert [served[0].json()["label"]] + [p["label"] for p in served[1].json()["predictions"]] == ["positive"] * 3 + ["negative"]

    expected = {"positive": 3, "negative": 1, "wrong_type": 1, "missing_text": 1, "probability_count": 4, "kchars_count": 4}
    deadline = time.monotonic() + 20  # the frontend picks the metrics up from the worker's log asynchronously
    while True:
        after = {key: read(scrape(server)) for key, read in watched.items()}
        delta = {key: after[key] - before[key] for key in watched}
        if all(delta[key] >= count for key, count in expected.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    time.sleep(0.5)  # nothing more may arrive
    after = {key: read(scrape(server)) for key, read in watched.items()}
    delta = {key: after[key] - before[key] for key in watched}
    assert {key: delta[key] for key in expected} == expected
    assert delta["probability_sum"] == pytest.approx(sum(probabilities), abs=1e-4)
    assert delta["kchars_sum"] == pytest.approx(sum(len(t) for t in POSITIVE + NEGATIVE) / 1000, abs=1e-6)


def test_metrics_excerpt_is_prometheus_text(server):
    text = requests.get(server.metrics + "/metrics", timeout=10).text
    for name, kind in (("SentimentPredictions", "counter"), ("SentimentRequestErrors", "counter"),
                       ("SentimentProbability", "histogram"), ("SentimentInputKiloChars", "histogram")):
        assert f"# TYPE {name} {kind}" in text, name
    assert re.search(r'^SentimentProbability_bucket\{.*le="\+Inf".*\} \d', text, re.M)


# --- evaluate.py ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def test_split():
    return evaluate.held_out_test_split()


def test_evaluate_scores_the_served_model_as_training_scores_the_exported_one(server, export_dir, signature, encoder,
                                                                             test_split, tmp_path):
    out = tmp_path / "served.json"
    run = subprocess.run([sys.executable, "evaluate.py", "--url", server.inference, "--out", str(out)],
                         cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    printed = json.loads(run.stdout)
    assert json.loads(out.read_text()) == printed

    texts, labels = test_split
    exported = torch.jit.load(str(export_dir / signature.model_file))
    expected = train.evaluate(exported, texts, labels, encoder, signature.threshold)
    assert printed["size"] == expected["size"] == len(texts)
    assert printed["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    probabilities = train.predict_proba(exported, texts, encoder)
    assert printed["correct"] == sum(int(p >= signature.threshold) == y for p, y in zip(probabilities.tolist(), labels))
    assert printed["roc_auc"] == pytest.approx(expected["roc_auc"], abs=2e-4)  # served probabilities have 6 decimals
    assert printed["served_versions"] == [signature.version]


def test_evaluate_on_a_labelled_file(server, signature, tmp_path):
    rows = [(POSITIVE[0], "positive"), (NEGATIVE[0], "0"), (POSITIVE[1], "1"), (POSITIVE[2], "negative")]  # last one mislabelled
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text("label,text\n" + "".join(f'{label},"{text}"\n' for text, label in rows))
    jsonl_file = tmp_path / "reviews.jsonl"
    jsonl_file.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
    assert evaluate.load_labelled(csv_file) == evaluate.load_labelled(jsonl_file) == ([t for t, _ in rows], [1, 0, 1, 0])

    result = evaluate.main(["--data", str(jsonl_file), "--url", server.inference, "--version", signature.version, "--chunk", "3"])
    assert (result["size"], result["correct"], result["accuracy"]) == (4, 3, 0.75)
    assert result["requested_version"] == signature.version and result["served_versions"] == [signature.version]


def test_evaluate_rejects_unusable_files_and_answers(server, tmp_path):
    bad_label = tmp_path / "bad.jsonl"
    bad_label.write_text(json.dumps({"text": "fine", "label": "maybe"}) + "\n")
    with pytest.raises(ValueError, match="row 1"):
        evaluate.load_labelled(bad_label)
    no_text = tmp_path / "no_text.csv"
    no_text.write_text("review,label\ngreat,1\n")
    with pytest.raises(ValueError, match="'text'"):
        evaluate.load_labelled(no_text)
    with pytest.raises(RuntimeError, match="404"):
        evaluate.evaluate_served(["fine"], [1], server.inference, version="99")
