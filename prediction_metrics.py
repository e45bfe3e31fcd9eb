"""Custom metrics for continued evaluation of the served model (a separate module because
TorchServe requires the handler module to define exactly one class)."""

from ts.metrics.metric_type_enum import MetricTypes

from payload import Parsed
from signature import Signature


class PredictionMetrics:
    """Custom metrics for continued evaluation, exposed by TorchServe on /metrics (Prometheus):
    predictions by label, the expected number of correct ones, the probability and input-length
    distributions, errors by kind and status."""

    def __init__(self, metrics):
        self.predictions = metrics.add_metric_to_cache("SentimentPredictions", "count", ["ModelName", "ModelVersion", "Label"], MetricTypes.COUNTER)
        # The sum of max(p, 1 - p) of the calibrated probabilities answered: over a window, divided by the predictions,
        # the accuracy the model expects of itself (drift.py, sentiment:estimated_accuracy). One update per batch.
        self.expected_correct = metrics.add_metric_to_cache("SentimentExpectedCorrect", "count", ["ModelName", "ModelVersion"], MetricTypes.COUNTER)
        # Status (the HTTP status answered) tells refused input (400) from the server's own failures (500, 503) whatever the kind.
        self.errors = metrics.add_metric_to_cache("SentimentRequestErrors", "count", ["ModelName", "ModelVersion", "Kind", "Status"], MetricTypes.COUNTER)
        self.probability = metrics.add_metric_to_cache("SentimentProbability", "probability", ["ModelName", "ModelVersion"], MetricTypes.HISTOGRAM)
        # In thousands of characters: TorchServe's fixed Prometheus buckets (0.005 ... 10) then span 5 to 10,000 characters.
        self.input_kchars = metrics.add_metric_to_cache("SentimentInputKiloChars", "kilocharacters", ["ModelName", "ModelVersion"], MetricTypes.HISTOGRAM)

    def record(self, parsed: list[Parsed], signature: Signature) -> None:
        model = [signature.model_name, signature.version]
        labels = {label: 0 for label in signature.labels}
        expected_correct = 0.0
        for request in parsed:
            if request.error is not None:
                self.errors.add_or_update(1, [*model, request.error.kind, str(request.error.status)])
                continue
            for text, probability, label in zip(request.texts, request.probabilities, request.labels):
                labels[label] += 1
                expected_correct += max(probability, 1 - probability)
                self.probability.add_or_update(probability, model)
                self.input_kchars.add_or_update(len(text) / 1000, model)
        for label, count in labels.items():
            if count:
                self.predictions.add_or_update(count, [*model, label])
        if any(labels.values()):
            self.expected_correct.add_or_update(expected_correct, model)
