"""Calibrated probabilities and the accuracy estimated from them without labels: export fits the map on
the validation mix (Platt scaling, with a term for the text's length where cross-validation prefers it),
payload.labelled alone applies it, a signature without it (or with a plain Platt map) serves as before;
on the rt-polarity test split, IMDB test and a 50/50 mix the served probabilities are better calibrated,
and the estimated accuracy (mean of max(p, 1 - p)) is within 0.02 of the true accuracy, which the
uncalibrated probabilities' estimate is not. It tracks a covariate shift and cannot see concept drift."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from sentiment.serving import drift
from sentiment.training import export
import quick_v2
from sentiment import data
from sentiment.training import nbsvm
from sentiment.ops.torchserve import ROOT
from sentiment.serving.core import predict_proba
from sentiment.serving.payload import labelled
from scripts import calibration
from sentiment.serving.runtime import load_core
from sentiment.serving.signature import CALIBRATION_CLIP, SIGNATURE_FILE, Signature, load_encoder

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def parts() -> dict:
    texts, labels, _ = data.load_dataset()
    return {name: ([texts[i] for i in rows], [labels[i] for i in rows]) for name, rows in data.split(len(texts)).items()}


def once_per_list(function):
    """`function(texts)` computed once per list of texts: three tests read IMDB test's 23,678 reviews, scored and served."""
    done = {}

    def cached(texts: list[str]) -> list[float]:
        key = tuple(texts)
        if key not in done:
            done[key] = function(texts)
        return list(done[key])
    return cached


@pytest.fixture(scope="module")
def score(export_dir, signature, encoder):
    """texts -> the exported core's own probabilities (sigmoid(logit)), before calibration."""
    core = torch.jit.load(str(export_dir / signature.model_file))
    return once_per_list(lambda texts: predict_proba(core, texts, encoder).tolist())


@pytest.fixture(scope="module")
def serve(score, signature, encoder):
    """texts -> the probabilities answered: the core's, calibrated with each text's length, as the handler answers."""
    return once_per_list(lambda texts: labelled(score(texts), signature, encoder.lengths(texts))[0])


@pytest.fixture(scope="module")
def imdb_test() -> tuple[list[str], list[int]]:
    return data.load_imdb("test")[:2]


def within(probabilities: list[float], labels: list[int], threshold: float) -> tuple[bool, float, float]:
    """Whether the true accuracy of these answers is within ESTIMATED_ACCURACY_Z sampling errors of their estimate."""
    accuracy = sum((p >= threshold) == bool(y) for p, y in zip(probabilities, labels)) / len(labels)
    estimate = drift.estimated_accuracy(probabilities)
    return abs(accuracy - estimate) <= drift.ESTIMATED_ACCURACY_Z * drift.estimate_error(probabilities), accuracy, estimate


# --- the map -----------------------------------------------------------------------------------------

def known_map(length_slope: float, seed: int = 0) -> tuple[list[float], list[int], list[int]]:
    """Probabilities, labels and lengths whose true map is sigmoid(0.6 z + length_slope z / sqrt(n) - 0.3)."""
    rng = np.random.default_rng(seed)
    lengths = rng.choice([5, 20, 200, 1000], 20_000)
    logits = rng.normal(0, 3, lengths.size) * np.sqrt(lengths) / 5
    truth = 0.6 * logits + length_slope * logits / np.sqrt(lengths) - 0.3
    labels = (rng.random(logits.size) < 1 / (1 + np.exp(-truth))).astype(int)
    return (1 / (1 + np.exp(-logits))).tolist(), labels.tolist(), lengths.tolist()


def test_calibration_fit_recovers_a_known_map_and_chooses_its_form_by_cross_validation():
    """Where the length matters, the length term wins the cross-validation and its slopes are recovered;
    where it does not, plain Platt scaling does as well and the fitted length slope is ~0 either way."""
    fit = export.fit_calibration(*known_map(length_slope=3.0))
    assert fit["method"] == "platt_length" and fit["cv_log_loss"]["platt_length"] < fit["cv_log_loss"]["platt"] - 0.01
    assert (fit["slope"], fit["length_slope"], fit["intercept"]) == (pytest.approx(0.6, abs=0.05), pytest.approx(3.0, abs=0.3),
                                                                     pytest.approx(-0.3, abs=0.05))
    fit = export.fit_calibration(*known_map(length_slope=0.0))
    assert fit["cv_log_loss"]["platt_length"] == pytest.approx(fit["cv_log_loss"]["platt"], abs=0.002)
    assert fit["slope"] == pytest.approx(0.6, abs=0.03) and fit.get("length_slope", 0) == pytest.approx(0, abs=0.3)


def test_export_fits_the_calibration_on_the_validation_mix_of_short_and_long_reviews(export_dir, signature, encoder, parts):
    """v1 trains on rt-polarity and IMDB: its map is fitted on both validation sets (1,066 snippets and the
    IMDB reviews data.is_imdb_validation holds out), where the traffic is."""
    model, _ = export.load_checkpoint(export_dir.parent)
    metrics = json.loads((export_dir.parent / "metrics.json").read_text())
    texts, labels = data.held_out(metrics, "validation")
    assert texts[:1066] == parts["validation"][0] and len(texts) == 1066 + metrics["imdb_validation"]["size"] > 3000
    assert all(data.is_imdb_validation(text) for text in texts[1066:])
    refit = export.fit_calibration(predict_proba(model, texts, encoder).tolist(), labels, encoder.lengths(texts))
    for key in ("slope", "length_slope", "intercept"):
        assert signature.calibration[key] == pytest.approx(refit[key], rel=1e-6), key
    assert {**signature.calibration, "slope": 0, "length_slope": 0, "intercept": 0} == {**refit, "slope": 0, "length_slope": 0, "intercept": 0}
    # v1's logit grows with the text: the length term wins the cross-validation (0.302 against Platt's 0.326)
    assert (signature.calibration["method"], signature.calibration["n"]) == ("platt_length", len(texts))
    assert signature.calibration["cv_log_loss"]["platt_length"] < signature.calibration["cv_log_loss"]["platt"] - 0.01


@pytest.mark.parametrize("length", [1, 20, 230, 4000])
def test_calibrate_is_increasing_at_every_length_and_stays_inside_0_1(signature, length):
    grid = [0.0, 1e-9] + [i / 1000 for i in range(1, 1000)] + [1 - 1e-9, 1.0]
    calibrated = [signature.calibrate(p, length) for p in grid]
    assert all(CALIBRATION_CLIP <= c <= 1 - CALIBRATION_CLIP for c in calibrated)
    # 0 and 1e-9 (1 - 1e-9 and 1) read as the same clipped input; a snippet's steep map reaches the output's clip
    inside = [c for c in calibrated[2:-2] if CALIBRATION_CLIP < c < 1 - CALIBRATION_CLIP]
    assert len(inside) > 500 and all(a < b for a, b in zip(inside, inside[1:]))  # strictly increasing inside the clip
    assert calibrated == sorted(calibrated)


def test_the_map_reads_the_length_the_model_reads(signature, encoder):
    """A snippet's logit is scaled up more than a review's (the same logit means more evidence in fewer
    words); the length is the words the featuriser reads, and a map that needs it refuses to guess."""
    assert encoder.lengths(["A gorgeous, moving film.", "<br />Dull &amp; long"]) == [6, 3]
    assert signature.calibrate(0.7, 20) > signature.calibrate(0.7, 230) > 0.5
    with pytest.raises(ValueError, match="length"):
        signature.calibrate(0.7)


def test_one_place_calibrates(signature):
    """payload.labelled is the only caller of Signature.calibrate among the served and scoring code; the
    handler, batch_predict, spark_predict, evaluate (which reads the server) and the drift reference go through it."""
    code = sorted(ROOT.glob("*.py")) + sorted((ROOT / "sentiment").rglob("*.py"))  # the entry points and the package
    callers = [str(path.relative_to(ROOT)) for path in code if ".calibrate(" in path.read_text()]
    assert callers == ["sentiment/serving/payload.py"]
    probabilities, lengths = [0.0, 0.2, 0.4999, 0.5, 0.8, 1.0], [1, 5, 20, 100, 230, 4000]
    assert labelled(probabilities, signature, lengths)[0] == [round(signature.calibrate(p, n), 6) for p, n in zip(probabilities, lengths)]


def test_a_platt_signature_from_before_the_length_term_serves_as_before(export_dir, tmp_path):
    """A signature whose map is plain Platt scaling (exported before issue 25) needs no lengths."""
    old = json.loads((export_dir / SIGNATURE_FILE).read_text())
    old["calibration"] = {"method": "platt", "slope": 2.0, "intercept": 0.5, "fitted_on": "validation split", "n": 1066}
    (tmp_path / SIGNATURE_FILE).write_text(json.dumps(old))
    signature = Signature.load(tmp_path)
    assert not signature.reads_lengths
    assert labelled([0.5, 0.8], signature)[0] == [round(1 / (1 + np.exp(-0.5)), 6), round(1 / (1 + np.exp(-(2 * np.log(4) + 0.5))), 6)]


def test_a_signature_without_calibration_serves_and_is_monitored_as_before(export_dir, tmp_path):
    """An export from before calibration: the core's probabilities are served as they are, drift.compare
    leaves the estimated accuracy out, and the rules are generated without its alert (with a note)."""
    old = json.loads((export_dir / SIGNATURE_FILE).read_text())
    del old["calibration"], old["reference"]["estimated_accuracy"], old["reference"]["estimated_accuracy_sd"]
    (tmp_path / SIGNATURE_FILE).write_text(json.dumps(old))
    signature = Signature.load(tmp_path)
    assert signature.calibration is None
    assert labelled([0.2, 0.4999996, 0.9], signature) == ([0.2, 0.5, 0.9], ["negative", "positive", "positive"])
    reference = signature.reference
    live = {"predictions": reference["n"], "positive": reference["positive_rate"] * reference["n"], "expected_correct": None,
            "probability": reference["probability"]["counts"], "input_kchars": reference["input_kchars"]["counts"]}
    assert "estimated_accuracy" not in drift.compare(live, reference) and drift.compare(live, reference)["verdict"] == "ok"
    run = subprocess.run([sys.executable, "-m", "sentiment.ops.rules", "--export", str(tmp_path),
                          "--rules-out", str(tmp_path / "rules"), "--tests-out", ""], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "exported before calibration" in run.stderr
    assert "sentiment:reference_estimated_accuracy" not in (tmp_path / "rules" / "reference.rules.yml").read_text()


# --- on the test sets: rt-polarity's snippets, IMDB's reviews, and half of each ----------------------------

def test_served_probabilities_are_calibrated_on_the_snippets_and_the_reviews(signature, score, serve, parts, imdb_test):
    """On the rt-polarity test split the ECE falls from 0.143 to within what a perfectly calibrated model
    shows at n = 1,066 (99th percentile of labels drawn from the served probabilities); on IMDB test it
    falls too. Within one length the ranking is the core's; across lengths the map reorders texts, and the
    ROC AUC does not fall."""
    for texts, labels in (parts["test"], imdb_test):
        raw = score(texts)
        before, after, y = np.array([round(p, 6) for p in raw]), np.array(serve(texts)), np.array(labels)
        assert calibration.ece(after, y) < calibration.ece(before, y)
        assert roc_auc_score(y, after) >= roc_auc_score(y, before) - 1e-4
    texts, labels = parts["test"]
    after, y = np.array(serve(texts)), np.array(labels)
    rng = np.random.default_rng(0)
    floor = [calibration.ece(after, (rng.random(y.size) < after).astype(float)) for _ in range(500)]
    assert calibration.ece(after, y) < np.percentile(floor, 99)


def test_estimated_accuracy_is_within_0_02_on_the_snippets_the_reviews_and_a_50_50_mix(signature, score, serve, parts, imdb_test):
    """Issue 25: |estimated - true| <= 0.02 on the rt-polarity test split, IMDB test and a 50/50 mix (as
    scripts/calibration.py draws it). The same check on the core's own probabilities (underconfident on the
    snippets: 0.663 estimated against 0.805) fails, so the check can tell a wrong estimate."""
    test_texts, test_labels = parts["test"]
    half = random.Random(calibration.SEED).sample(range(len(imdb_test[0])), len(test_texts))
    sets = {"rt_polarity_test": parts["test"], "imdb_test": imdb_test,
            "mix_50_50": (test_texts + [imdb_test[0][i] for i in half], test_labels + [imdb_test[1][i] for i in half])}
    for name, (texts, labels) in sets.items():
        _, accuracy, estimate = within(serve(texts), labels, signature.threshold)
        assert abs(accuracy - estimate) <= calibration.TOLERANCE, (name, accuracy, estimate)
    _, accuracy, estimate = within(serve(test_texts), test_labels, signature.threshold)
    assert estimate == pytest.approx(signature.reference["estimated_accuracy"], abs=1e-6)  # what the alert compares with
    _, accuracy, estimate = within([round(p, 6) for p in score(test_texts)], test_labels, signature.threshold)
    assert abs(accuracy - estimate) > calibration.TOLERANCE, (accuracy, estimate)


def test_estimate_tracks_a_covariate_shift_and_cannot_see_concept_drift(signature, serve, parts):
    """Snippets with their strongest sentiment words removed: the accuracy falls and the estimate with it,
    within its error. The same texts with 30 % of their labels flipped: the estimate does not move."""
    sets = calibration.traffic_sets(*parts["test"], *parts["train"])
    served = {name: serve(texts) for name, (texts, _, _) in sets.items()
              if name in ("test", "sentiment_words_masked", "concept_drift")}
    ok, masked_accuracy, masked_estimate = within(served["sentiment_words_masked"], sets["sentiment_words_masked"][1], signature.threshold)
    _, test_accuracy, test_estimate = within(served["test"], sets["test"][1], signature.threshold)
    assert ok and masked_accuracy < test_accuracy - 0.03 and masked_estimate < test_estimate - 0.03, (masked_accuracy, masked_estimate)
    ok, drifted_accuracy, drifted_estimate = within(served["concept_drift"], sets["concept_drift"][1], signature.threshold)
    assert not ok and drifted_estimate == test_estimate and drifted_accuracy < test_accuracy - 0.1


def test_masking_removes_sentiment_words_and_keeps_the_rest():
    words = {"gorgeous", "dull"}
    assert calibration.masked("A gorgeous,  dull film. Gorgeous!", words) == "A , film. !"


# --- v2 -----------------------------------------------------------------------------------------------

def test_v2_export_is_calibrated_on_its_served_core(parts):
    """The quick v2's export carries its own calibration, and its reference estimate is that of the served
    (int8) core's calibrated answers on the test split. Whether that estimate holds is not asserted here:
    the real v2's does not on snippets (issue 25's shortfall, docs/models.md), and a 40-step model's
    varies from build to build."""
    quick_v2.build()
    signature = Signature.load(quick_v2.EXPORT)
    core, encoder = load_core(quick_v2.EXPORT, signature), load_encoder(quick_v2.EXPORT, signature)
    texts = parts["test"][0]
    served = labelled(predict_proba(core, texts, encoder).tolist(), signature, encoder.lengths(texts))[0]
    assert signature.calibration["method"] in export.CALIBRATION_METHODS and export.increasing(signature.calibration)
    assert drift.estimated_accuracy(served) == pytest.approx(signature.reference["estimated_accuracy"], abs=1e-4)

