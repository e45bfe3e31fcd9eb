"""Custom metrics for continued evaluation of the served model (a separate module because
TorchServe requires the handler module to define exactly one class)."""

from ts.metrics.metric_type_enum import MetricTypes

from sentiment.serving.drift import HISTOGRAMS, SUMS, bin_counts, confidences, le_label
from sentiment.serving.payload import Parsed
from sentiment.serving.signature import Signature

UNITS = {"probability": "probability", "input_kchars": "kilocharacters"}


class PredictionMetrics:
    """Custom metrics for continued evaluation, exposed by TorchServe on /metrics (Prometheus):
    predictions by label, the expected number of correct ones, the probability and input-length
    distributions, errors by kind and status."""

    def __init__(self, metrics):
        self.predictions = metrics.add_metric_to_cache("SentimentPredictions", "count", ["ModelName", "ModelVersion", "Label"], MetricTypes.COUNTER)
        # The sum of max(p, 1 - p) of the calibrated probabilities answered: over a window, divided by the predictions,
        # the accuracy the model expects of itself (sentiment/serving/drift.py, sentiment:estimated_accuracy). One update per batch.
        self.expected_correct = metrics.add_metric_to_cache("SentimentExpectedCorrect", "count", ["ModelName", "ModelVersion"], MetricTypes.COUNTER)
        # Status (the HTTP status answered) tells refused input (400) from the server's own failures (500, 503) whatever the kind.
        self.errors = metrics.add_metric_to_cache("SentimentRequestErrors", "count", ["ModelName", "ModelVersion", "Kind", "Status"], MetricTypes.COUNTER)
        # The distributions of the answered probabilities and input lengths (in thousands of characters: the bins
        # 0.005 ... 10 span 5 to 10,000 characters) as counts per bin (drift.HISTOGRAMS) and sums: one update
        # a batch for each bin hit, where a histogram would take one a text (sentiment/serving/drift.py says what that cost).
        self.bins = {key: metrics.add_metric_to_cache(name, UNITS[key], ["ModelName", "ModelVersion", "le"], MetricTypes.COUNTER)
                     for key, (name, _) in HISTOGRAMS.items()}
        self.sums = {key: metrics.add_metric_to_cache(name, UNITS[key], ["ModelName", "ModelVersion"], MetricTypes.COUNTER)
                     for key, name in SUMS.items()}

    def record(self, parsed: list[Parsed], signature: Signature) -> None:
        model = [signature.model_name, signature.version]
        labels = {label: 0 for label in signature.labels}
        values = {key: [] for key in HISTOGRAMS}
        for request in parsed:
            if request.error is not None:
                self.errors.add_or_update(1, [*model, request.error.kind, str(request.error.status)])
                continue
            for label in request.labels:
                labels[label] += 1
            values["probability"] += request.probabilities
            values["input_kchars"] += [len(text) / 1000 for text in request.texts]
        for label, count in labels.items():
            if count:
                self.predictions.add_or_update(count, [*model, label])
        if not values["probability"]:
            return
        self.expected_correct.add_or_update(sum(confidences(values["probability"])), model)
        for key, (_, bounds) in HISTOGRAMS.items():
            for bound, count in zip(bounds, bin_counts(values[key], bounds)):
                if count:
                    self.bins[key].add_or_update(count, [*model, le_label(bound)])
            self.sums[key].add_or_update(sum(values[key]), model)
