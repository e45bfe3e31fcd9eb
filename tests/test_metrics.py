"""Continued evaluation: the handler's Prometheus metrics count exactly what was served, and
sentiment/ops/evaluate.py scores the served model exactly as the exported core scores through payload.labelled."""

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import requests
import torch
from sklearn.metrics import roc_auc_score

from sentiment.serving import drift
from sentiment import data
from sentiment.ops import evaluate
from sentiment.training import nbsvm
from sentiment.ops.torchserve import ROOT
from sentiment.serving.payload import labelled

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

POSITIVE = [
    "A gorgeous, moving film with a wonderful cast and a smart, funny script.",
    "One of the most beautiful and touching movies of the year; a triumph.",
    "A delightful, warm and witty comedy that is a joy from start to finish.",
]
NEGATIVE = ["A dull, lifeless mess: boring, predictable and badly acted."]


def served(server, body) -> requests.Response:
    return requests.post(server.inference + "/predictions/sentiment", json=body, timeout=30)


def test_prediction_metrics_count_exactly_what_was_served(server, signature, scrape, await_metrics):
    model = {"ModelName": signature.model_name, "ModelVersion": signature.version}
    watched = {
        "positive": lambda s: s.value("SentimentPredictions", **model, Label="positive"),
        "negative": lambda s: s.value("SentimentPredictions", **model, Label="negative"),
        "wrong_type": lambda s: s.value("SentimentRequestErrors", **model, Kind="wrong_type", Status="400"),
        "missing_text": lambda s: s.value("SentimentRequestErrors", **model, Kind="missing_text", Status="400"),
        "empty_text": lambda s: s.value("SentimentRequestErrors", **model, Kind="empty_text", Status="400"),
        "probability_count": lambda s: s.value("SentimentProbabilityBin", **model),  # all its bins
        "probability_sum": lambda s: s.value("SentimentProbabilitySum", **model),
        "expected_correct": lambda s: s.value("SentimentExpectedCorrect", **model),
        "kchars_count": lambda s: s.value("SentimentInputKiloCharsBin", **model),
        "kchars_sum": lambda s: s.value("SentimentInputKiloCharsSum", **model),
    }
    before = scrape(server)
    before = {key: read(before) for key, read in watched.items()}

    answers = [served(server, {"text": POSITIVE[0]}), served(server, {"texts": POSITIVE[1:] + NEGATIVE})]
    bad = [served(server, {"text": 42}), served(server, {"review": "great"}), served(server, {"texts": [POSITIVE[0], " "]})]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    assert [(r.status_code, r.json()["kind"]) for r in bad] == [(400, "wrong_type"), (400, "missing_text"), (400, "empty_text")]
    predictions = [answers[0].json()] + answers[1].json()["predictions"]
    assert [p["label"] for p in predictions] == ["positive"] * 3 + ["negative"]

    expected = {"positive": 3, "negative": 1, "wrong_type": 1, "missing_text": 1, "empty_text": 1,
                "probability_count": 4, "kchars_count": 4}  # a bad request's good text is not counted
    after = await_metrics(server, lambda s: {key: read(s) - before[key] for key, read in watched.items()}, expected)
    assert {key: after[key] for key in expected} == expected
    assert after["probability_sum"] == pytest.approx(sum(p["probability"] for p in predictions), abs=1e-4)
    # one update per batch of the sum of max(p, 1 - p): the accuracy the model expects of these 4 answers, times 4
    assert after["expected_correct"] == pytest.approx(sum(max(p["probability"], 1 - p["probability"]) for p in predictions), abs=1e-6)
    assert after["kchars_sum"] == pytest.approx(sum(len(t) for t in POSITIVE + NEGATIVE) / 1000, abs=1e-6)


def test_metrics_excerpt_is_prometheus_text(server, signature, scrape, await_metrics):
    """The model's own families as README documents them: counters, each labelled with ModelName and
    ModelVersion; the distributions as one counter per bin (`le`, the bin's upper bound, drift.HISTOGRAMS:
    none above 1 for a probability) and one of their sums. This test sends what makes each series appear,
    so it does not rely on earlier tests."""
    model = {"ModelName": signature.model_name, "ModelVersion": signature.version}

    def in_bins(s, family: str, upto: float) -> float:
        return sum(b.value for b in s.samples(family, **model) if drift.parse_le(b.labels["le"]) <= upto)

    def read(s):
        return {
            "positive": s.value("SentimentPredictions", **model, Label="positive"),
            "negative": s.value("SentimentPredictions", **model, Label="negative"),
            "null_byte": s.value("SentimentRequestErrors", **model, Kind="null_byte"),
            **{f"{family}<={upto}": in_bins(s, family, upto)
               for family in ("SentimentProbabilityBin", "SentimentInputKiloCharsBin") for upto in (0.5, 1.0, math.inf)},
        }

    before = read(scrape(server))
    texts = [POSITIVE[0], NEGATIVE[0]]
    answer = served(server, {"texts": texts})
    assert [p["label"] for p in answer.json()["predictions"]] == ["positive", "negative"], answer.text
    assert served(server, {"text": "nul\u0000"}).json()["kind"] == "null_byte"
    after = await_metrics(server, lambda s: {k: v - before[k] for k, v in read(s).items()},
                          {"positive": 1, "negative": 1, "null_byte": 1, "SentimentProbabilityBin<=inf": 2})
    assert after == {
        "positive": 1, "negative": 1, "null_byte": 1,
        # probabilities: the negative one is <= 0.5, both are <= 1
        "SentimentProbabilityBin<=0.5": 1, "SentimentProbabilityBin<=1.0": 2, "SentimentProbabilityBin<=inf": 2,
        # input lengths in thousands of characters: both texts are under 500 characters
        "SentimentInputKiloCharsBin<=0.5": 2, "SentimentInputKiloCharsBin<=1.0": 2, "SentimentInputKiloCharsBin<=inf": 2,
    }

    metrics = scrape(server)
    for name in ("SentimentPredictions", "SentimentRequestErrors", "SentimentExpectedCorrect", *drift.SUMS.values(),
                 *(name for name, _ in drift.HISTOGRAMS.values())):
        assert metrics.type(name) == "counter" and metrics.samples(name, **model), name
    for family, bounds in drift.HISTOGRAMS.values():
        served_bounds = {drift.parse_le(b.labels["le"]) for b in metrics.samples(family, **model)}
        assert served_bounds <= set(bounds), (family, served_bounds)  # the reference's bins, none above 1 for a probability


# --- sentiment/ops/evaluate.py ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def test_split():
    return data.held_out_test_split()


def test_evaluate_scores_the_served_model_as_the_exported_core_scores(server, export_dir, signature, encoder,
                                                                             test_split, tmp_path):
    out = tmp_path / "served.json"
    run = subprocess.run([sys.executable, "-m", "sentiment.ops.evaluate", "--url", server.inference, "--out", str(out)],
                         cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    printed = json.loads(run.stdout)
    assert json.loads(out.read_text()) == printed

    texts, labels = test_split
    exported = torch.jit.load(str(export_dir / signature.model_file))
    expected = nbsvm.evaluate(exported, texts, labels, encoder, signature.threshold)  # the core's own sigmoid, uncalibrated
    assert printed["size"] == expected["size"] == len(texts)
    probabilities, predicted = labelled(nbsvm.predict_proba(exported, texts, encoder).tolist(), signature, encoder.lengths(texts))  # as served
    assert printed["correct"] == sum((label == signature.labels[1]) == bool(y) for label, y in zip(predicted, labels))
    assert printed["accuracy"] == round(printed["correct"] / len(texts), 4)
    # the AUC of the calibrated probabilities (the map reads each text's length, so it reorders texts of different lengths)
    assert printed["roc_auc"] == pytest.approx(roc_auc_score(labels, probabilities), abs=2e-4)
    assert printed["served_versions"] == [signature.version]


def test_evaluate_on_a_labelled_file(server, signature, tmp_path):
    rows = [(POSITIVE[0], "positive"), (NEGATIVE[0], "0"), (POSITIVE[1], "1"), (POSITIVE[2], "negative")]  # last one mislabelled
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text("label,text\n" + "".join(f'{label},"{text}"\n' for text, label in rows))
    jsonl_file = tmp_path / "reviews.jsonl"
    jsonl_file.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
    assert (data.load_labelled(csv_file, signature.labels) == data.load_labelled(jsonl_file, signature.labels)
            == ([t for t, _ in rows], [1, 0, 1, 0]))

    result = evaluate.main(["--data", str(jsonl_file), "--url", server.inference, "--version", signature.version, "--chunk", "3"])
    assert (result["size"], result["correct"], result["accuracy"]) == (4, 3, 0.75)
    assert result["requested_version"] == signature.version and result["served_versions"] == [signature.version]


def test_evaluate_rejects_unusable_files_and_answers(server, signature, tmp_path):
    bad_label = tmp_path / "bad.jsonl"
    bad_label.write_text(json.dumps({"text": "fine", "label": "maybe"}) + "\n")
    with pytest.raises(ValueError, match="row 1"):
        data.load_labelled(bad_label, signature.labels)
    no_text = tmp_path / "no_text.csv"
    no_text.write_text("review,label\ngreat,1\n")
    with pytest.raises(ValueError, match="'text'"):
        data.load_labelled(no_text, signature.labels)
    with pytest.raises(RuntimeError, match="404"):
        evaluate.evaluate_served(["fine"], [1], signature, server.inference, version="99")


def test_evaluate_takes_labels_and_limits_from_the_served_models_signature(server, signature):
    """Answers from another version than the signature's are refused; the chunk never exceeds its max_texts."""
    other = dataclasses.replace(signature, version="7")
    with pytest.raises(RuntimeError, match=r"version\(s\) \['1'\], but the signature is version 7"):
        evaluate.evaluate_served(["fine"], [1], other, server.inference)
    assert [data.parse_label(name, ("bad", "good")) for name in ("good", "bad", "1")] == [1, 0, 1]
    texts = [POSITIVE[0]] * (signature.max_texts + 1)  # one request of them all would be refused (too_many_texts)
    assert evaluate.evaluate_served(texts, [1] * len(texts), signature, server.inference, chunk=1000)["size"] == len(texts)
