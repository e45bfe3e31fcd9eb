"""Is the served model still fit for purpose? The reference distribution recorded at export, and the
statistics that compare live traffic with it. Pure Python (no TorchServe, no Prometheus): export.py
fills `Signature.reference`, sentiment/ops/rules.py turns it into Prometheus rules that
compute the same statistics in PromQL, and sentiment/ops/drift_report.py computes them from Prometheus' API.

The statistic is the population stability index over the served distributions' bins,

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

with a_i the live and e_i the reference share of bucket i, each smoothed with half a count per
bucket (Jeffreys) so that an empty bucket stays finite. PSI is the symmetrised Kullback-Leibler
divergence, and to second order equal to Pearson's chi-square statistic divided by the sample
size: with no drift, PSI ~ chi2(K-1) * (1/n + 1/m) for n live and m reference values in K buckets
(Yurdakul 2018). Its conventional thresholds (Siddiqi 2006, "Credit Risk Scorecards"): below 0.1
no significant change, 0.1 to 0.25 a moderate shift (look), above 0.25 a significant one (act).
`MIN_COUNT` live predictions keep chance below those: with K = 10 probability buckets and the
1,066-review reference, the 99.9th percentile of PSI without drift is 27.9 * (1/400 + 1/1066) =
0.096 at n = 400, under the 0.1 warning.

Drift says the inputs changed, not that the model got worse. The estimated accuracy does, without
labels (confidence-based performance estimation, NannyML's CBPE): served probabilities are
calibrated (export.fit_calibration), so a text answered p is right with probability c = max(p, 1 - p),
and the expected accuracy of n answers is the mean of c; the true accuracy differs from it by
sqrt(sum c (1 - c)) / n (`estimate_error`) when the calibration holds for the traffic. It holds under
covariate shift (other texts, the same P(label | text)); it cannot see concept drift (the same text
read with a new label), and it errs where the model's probabilities do not transfer (e.g. far longer
texts) or where only the label mix moved. The alert compares a window's estimate with the test split's
(`reference["estimated_accuracy"]`): without a change, their difference is the sampling error of two
means of c, sd(c) * sqrt(1/n + 1/m) for n live and m reference answers, but only the window's
part changes from one window to the next: the reference's error is one draw, the same for every
window of a version, so a margin from their pooled error (ESTIMATED_ACCURACY_Z * sd(c) * sqrt(1/n +
1/m)) lets a version whose reference happened to read high page again and again (simulated at 1,000
answers a minute: 1,214 alerts in 12,000 version-days, all from 6 of 400 versions). The margin adds
ESTIMATED_ACCURACY_Z standard errors of each, sd(c) * (1/sqrt(n) + 1/sqrt(m)), at the window's own
n (computed in PromQL from its count, sentiment:estimated_accuracy_margin; docs/monitoring.md
gives v1's): a busy window sees a drop that one of MIN_COUNT answers cannot. Paging rate by chance
(simulated, tests/test_monitoring.py; the sd cancels): 2 alerts in 60,000 version-days at 1,000
answers a minute (2 of 2,000 versions ever paged), 6 at 14 a minute."""

import math

from sentiment.serving.payload import labelled
from sentiment.serving.signature import Signature

# Bin bounds: the buckets TorchServe 0.12 gives every Prometheus histogram (the Prometheus Java client's
# defaults), which the distributions were first served in. They are served as counters of their own now,
# one series a bin (sentiment/serving/metrics.py): a histogram takes one [METRICS] line a text, which the frontend
# parses, and 64-text requests served ~30 % slower for it; a bin counter takes one a batch and bin hit.
TORCHSERVE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# Upper bounds ("le") of the bins compared: a probability never exceeds 1, so no bin above 1; the input
# length keeps every bound and the overflow.
PROBABILITY_LE = tuple(b for b in TORCHSERVE_BUCKETS if b <= 1.0)
KCHARS_LE = TORCHSERVE_BUCKETS + (math.inf,)
# reference key -> (the served counter of values per bin, {ModelName, ModelVersion, le}; its bin upper bounds)
HISTOGRAMS = {
    "probability": ("SentimentProbabilityBin", PROBABILITY_LE),
    "input_kchars": ("SentimentInputKiloCharsBin", KCHARS_LE),
}
SUMS = {"probability": "SentimentProbabilitySum", "input_kchars": "SentimentInputKiloCharsSum"}  # the values' sums

SMOOTHING = 0.5  # pseudo-count added to every bin, live and reference alike
PSI_WARNING = 0.1
PSI_CRITICAL = 0.25
POSITIVE_RATE_TOLERANCE = 0.10  # |live - reference| share of positive predictions
MIN_COUNT = 400  # predictions in the window before any drift verdict
ESTIMATED_ACCURACY_Z = 3.09  # standard errors: the normal's one-sided 99.9th percentile


def le_label(bound: float) -> str:
    """A bound as TorchServe writes it in the `le` label: 0.005, 1.0, 10.0, +Inf."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def parse_le(label: str) -> float:
    return math.inf if label == "+Inf" else float(label)


def bin_counts(values: list[float], le: tuple[float, ...]) -> list[int]:
    """How many values fall in each bin (le[i-1], le[i]]."""
    counts = [0] * len(le)
    for value in values:
        for i, bound in enumerate(le):
            if value <= bound:
                counts[i] += 1
                break
        else:
            raise ValueError(f"{value} is above the last bin bound {le[-1]}")
    return counts


def reference_distribution(probabilities: list[float], texts: list[str], signature: Signature,
                           lengths: list[int] | None = None) -> dict:
    """The test split as the served model sees it, in the served histograms' bins: probabilities
    (rounded and labelled as the handler answers them), the positive rate, input lengths in
    thousands of characters. `lengths`: encoder.lengths(texts), where the calibration reads them."""
    rounded, predicted = labelled([float(p) for p in probabilities], signature, lengths)
    kchars = [len(text) / 1000 for text in texts]
    n = len(rounded)
    probability = {"le": [le_label(b) for b in PROBABILITY_LE], "counts": bin_counts(rounded, PROBABILITY_LE)}
    confidence = confidences(rounded)
    mean_confidence = sum(confidence) / n
    return {
        "source": "held-out test split",
        "n": n,
        "positive_rate": round(predicted.count(signature.labels[1]) / n, 6),
        "estimated_accuracy": round(mean_confidence, 6),
        "estimated_accuracy_sd": round(math.sqrt(sum((c - mean_confidence) ** 2 for c in confidence) / n), 6),
        "mean_probability": round(sum(rounded) / n, 6),
        "mean_kchars": round(sum(kchars) / n, 6),
        "probability": probability,
        "input_kchars": {"le": [le_label(b) for b in KCHARS_LE], "counts": bin_counts(kchars, KCHARS_LE)},
    }


def confidences(probabilities: list[float]) -> list[float]:
    """How likely each answer is right if its calibrated probability p is: max(p, 1 - p). Summed, the
    expected number of right answers (the handler's SentimentExpectedCorrect)."""
    return [max(p, 1 - p) for p in probabilities]


def estimated_accuracy(probabilities: list[float]) -> float:
    """The expected accuracy of answers with these calibrated probabilities: the mean of their confidences."""
    return sum(confidences(probabilities)) / len(probabilities)


def estimate_error(probabilities: list[float]) -> float:
    """The standard deviation of the true accuracy around `estimated_accuracy` if the probabilities are
    calibrated: each answer is right with probability c = max(p, 1 - p), independently."""
    return math.sqrt(sum(max(p, 1 - p) * min(p, 1 - p) for p in probabilities)) / len(probabilities)


def estimated_accuracy_margin(reference: dict, n: int = MIN_COUNT) -> float:
    """How far below the reference's estimated accuracy a window's of `n` answers may fall by chance
    (ESTIMATED_ACCURACY_Z standard errors of the window's mean of max(p, 1 - p) plus as many of the
    reference's, a constant bias for all its windows). The alert takes `n` from its window
    (sentiment:estimated_accuracy_margin); MIN_COUNT gives the widest margin it acts on."""
    return ESTIMATED_ACCURACY_Z * reference["estimated_accuracy_sd"] * (1 / math.sqrt(n) + 1 / math.sqrt(reference["n"]))


def smoothed_shares(counts: list[float], smoothing: float = SMOOTHING) -> list[float]:
    total = sum(counts) + smoothing * len(counts)
    return [(c + smoothing) / total for c in counts]


def psi(live_counts: list[float], reference_counts: list[float], smoothing: float = SMOOTHING) -> float:
    """Population stability index of live against reference bin counts (both smoothed)."""
    if len(live_counts) != len(reference_counts):
        raise ValueError(f"{len(live_counts)} live bins against {len(reference_counts)} reference bins")
    live, ref = smoothed_shares(live_counts, smoothing), smoothed_shares(reference_counts, smoothing)
    return sum((a - e) * math.log(a / e) for a, e in zip(live, ref))


def level(value: float, warning: float, critical: float | None = None) -> str:
    if critical is not None and value > critical:
        return "critical"
    return "warning" if value > warning else "ok"


def compare(live: dict, reference: dict) -> dict:
    """Live statistics of one model version against its reference, with a verdict.

    `live`: {"predictions": n, "positive": n, "expected_correct": sum of max(p, 1 - p) (None if not
    served), "probability": [bin counts], "input_kchars": [bin counts]}, the increases over one window.
    Returns each statistic, its level (ok / warning / critical) and `verdict`: "insufficient data"
    below MIN_COUNT predictions, else the worst level.
    """
    n = live["predictions"]
    result = {"predictions": n, "reference_n": reference["n"]}
    result["positive_rate"] = live["positive"] / n if n else math.nan
    result["reference_positive_rate"] = reference["positive_rate"]
    shift = result["positive_rate"] - reference["positive_rate"]
    result["positive_rate_level"] = level(abs(shift), POSITIVE_RATE_TOLERANCE) if n else "ok"
    for key in HISTOGRAMS:
        counts = live[key]
        result[f"{key}_psi"] = psi(counts, reference[key]["counts"]) if sum(counts) else math.nan
        result[f"{key}_level"] = level(result[f"{key}_psi"], PSI_WARNING, PSI_CRITICAL) if sum(counts) else "ok"
    levels = [result[k] for k in ("positive_rate_level", "probability_level", "input_kchars_level")]
    if "estimated_accuracy" in reference:  # signatures exported before calibration have none
        expected_correct = live.get("expected_correct")
        result["estimated_accuracy"] = expected_correct / n if n and expected_correct is not None else math.nan
        result["reference_estimated_accuracy"] = reference["estimated_accuracy"]
        result["estimated_accuracy_margin"] = estimated_accuracy_margin(reference, n) if n else math.nan
        drop = reference["estimated_accuracy"] - result["estimated_accuracy"]
        result["estimated_accuracy_level"] = "warning" if drop > result["estimated_accuracy_margin"] else "ok"  # NaN: ok
        levels.append(result["estimated_accuracy_level"])
    if n < MIN_COUNT:
        result["verdict"] = "insufficient data"
    else:
        result["verdict"] = "critical" if "critical" in levels else "warning" if "warning" in levels else "ok"
    return result
