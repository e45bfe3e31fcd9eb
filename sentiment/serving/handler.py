"""TorchServe handler: an exported sentiment core (v1 NBSVM or v2 transformer) as a stateless serving function.

Per request (one TorchServe batch holds many): validate -> featurise (the model's own featuriser,
as in training) -> one forward pass for the whole batch -> sigmoid -> label. A bad request gets
its own HTTP 400 with a JSON body; the good requests batched with it are answered as usual.
Explanation requests (/explanations/..., KServe :explain) share the batch and its forward pass, and
then get which words made their prediction (sentiment/serving/explain.py). The signature in the archive says which
model it is; nothing here depends on the version.
"""

import logging
import time

import torch
from ts.torch_handler.base_handler import BaseHandler

from sentiment.serving.explain import explainer_for
from sentiment.serving.core import predict_proba
from sentiment.serving.runtime import load_core
from sentiment.serving.payload import JSON, BadRequest, Parsed, RequestError, Unavailable, answer_all, encoded, explanation_body, parse_request, response_body
from sentiment.serving.metrics import PredictionMetrics
from sentiment.serving.signature import Signature, load_encoder
from sentiment.serving.cost import measure_cost

log = logging.getLogger(__name__)

# Threads per worker unless model-config.yaml's `handler: {torch_threads: N}` says otherwise: one,
# because workers, not threads, use the cores (more threads only contend with the other workers).
TORCH_THREADS = 1
# A batch may spend this share of the model's responseTimeout: its requests are admitted while their
# estimated cost (cost.Cost, measured by the worker at start on its host) fits, and no retry pass or
# explanation starts after it. The rest is margin for a loaded machine: a batch that outruns the
# timeout restarts the worker and fails every request in it. What is not admitted gets 503 (retry).
BATCH_BUDGET = 1 / 3
# The first request of a batch is admitted even past the budget, while its estimate (an upper bound) is
# within this share of responseTimeout; a costlier one, alone, is answered 503 request_budget (on a
# throttled, busy host: a v2 explanation of 2 long texts was estimated at 70 s and ran past 30).
REQUEST_SHARE = 0.9


class SentimentHandler(BaseHandler):
    def initialize(self, context):
        """Once per worker: signature, featuriser, the served core (runtime.load_core: the TorchScript model.pt that
        BaseHandler loads from the archive's serialized file, or the ONNX core the signature names) and the
        explainer, which differentiates the float32 TorchScript core."""
        super().initialize(context)
        model_config = getattr(context, "model_yaml_config", None) or {}
        settings = model_config.get("handler") or {}
        torch.set_num_threads(int(settings.get("torch_threads", TORCH_THREADS)))
        model_dir = context.system_properties["model_dir"]
        self.signature = Signature.load(model_dir)
        self.encoder = load_encoder(model_dir, self.signature)
        self.core = load_core(model_dir, self.signature, torchscript=self.model)
        # model-config.yaml's `handler: {explain_steps: N}` overrides v2's Integrated Gradients steps (explain.STEPS).
        self.explainer = explainer_for(self.model, self.encoder, self.signature, settings.get("explain_steps"))
        timeout = float(model_config.get("responseTimeout", 120))  # 120 s: TorchServe's default
        self.budget, self.request_limit = timeout * BATCH_BUDGET, timeout * REQUEST_SHARE
        self.cost = measure_cost(self.forward, self.explainer, self.signature)
        self.prediction_metrics = PredictionMetrics(context.metrics)
        self.initialized = True
        log.info("loaded %s v%s (%s, %s %s, %d torch threads); costliest text %.1f ms, its explanation %.1f ms more",
                 self.signature.model_name, self.signature.version, self.signature.architecture, self.signature.runtime["name"],
                 self.signature.runtime["precision"], torch.get_num_threads(),
                 self.cost.prediction * 1000, self.cost.explanation * 1000)

    def _is_explain(self) -> bool:
        """Never for the whole batch. BaseHandler.handle routes a whole batch to explain_handle when its
        FIRST request came through an explanations endpoint, so predictions batched behind an explanation
        (or an explanation behind a prediction) would get the wrong answer. Each request's own "explain"
        header is read in preprocess instead, and handle always takes the preprocess -> inference ->
        postprocess path."""
        return False

    def preprocess(self, data: list[dict]) -> list[Parsed]:
        self.batch_started = time.monotonic()
        parsed = []
        for idx, row in enumerate(data):
            body = row.get("body", row.get("data")) if isinstance(row, dict) else row
            explain = self.is_explanation(idx)
            try:
                request = parse_request(body, self.request_content_type(idx, row), self.signature, explain)
            except BadRequest as error:
                request = Parsed(error=error)
            except Exception as error:  # any other failure to read this request is its own 400, never its batch's 503
                log.exception("request %d could not be parsed", idx)
                request = Parsed(error=BadRequest("invalid_request", f"request could not be read: {type(error).__name__}: {error}"[:500]))
            request.explain = explain
            parsed.append(request)
        log.info("batch of %d requests, %d explanations", len(parsed), sum(request.explain for request in parsed))  # tests read the mix
        return parsed

    def is_explanation(self, idx: int) -> bool:
        """TorchServe's frontend sets the "explain" header of every request: "True" for /explanations/...,
        KServe v1 :explain and v2 /explain, "False" for predictions."""
        return self.context.get_request_header(idx, "explain") == "True"

    def request_content_type(self, idx: int, row: dict) -> str | None:
        """The Content-Type of the body parameter; form-encoded bodies arrive as fields, not a body."""
        if not isinstance(row, dict):  # a bare body: no parameter, so no Content-Type to read
            return None
        if not any(name in row for name in ("body", "data")):
            return "application/x-www-form-urlencoded"
        header = self.context.get_request_header(idx, "body" if "body" in row else "data")
        return header.get("content-type") if isinstance(header, dict) else header

    def inference(self, parsed: list[Parsed]) -> list[Parsed]:
        """One forward pass over every text of the admitted requests; explanations for those that asked."""
        admitted = self.admit([request for request in parsed if request.error is None])
        self.answer_isolating_failures(admitted)
        self.add_explanations(admitted)
        return parsed

    def admit(self, requests: list[Parsed]) -> list[Parsed]:
        """The requests, predictions first and otherwise in order, whose estimated cost (predictions and
        explanations, by normalised length) fits the batch's budget (the first up to REQUEST_SHARE of the
        timeout); the others are answered 503 before any work. TorchServe sizes batches by count, not cost: 32 requests of 64 long
        texts would take v1 ~30 s against its 10 s timeout."""
        admitted, spent = [], 0.0
        for request in sorted(requests, key=lambda r: r.explain):  # predictions first: one explanation costs many of them
            cost = self.cost.seconds(self.signature, request.texts, request.explain)
            if cost > self.request_limit:  # on this host now, even alone it could outrun the timeout
                request.error = Unavailable("request_budget", f"this request is estimated at {cost:.0f} s on this worker, over its "
                                                              f"{self.request_limit:.0f} s: retry, or send fewer or shorter texts")
                continue
            if admitted and spent + cost > self.budget:
                request.error = Unavailable("batch_budget", f"this batch's other requests use its {self.budget:.0f} s budget: retry")
                continue
            admitted.append(request)
            spent += cost
        if len(admitted) < len(requests):
            log.warning("admitted %d of %d requests (estimated %.1f s of the batch's %.1f s budget); the others answered 503",
                        len(admitted), len(requests), spent, self.budget)
        return admitted

    def over_budget(self) -> bool:
        return time.monotonic() - self.batch_started > self.budget

    def answer_isolating_failures(self, requests: list[Parsed]) -> None:
        """One forward pass over all the requests' texts. If it fails, each half is tried alone, down to
        the single requests that break the model (HTTP 500): k such requests among n cost about
        2k log2(n) passes, not n + 1, and fail only themselves. A retry pass that would start after the
        budget is answered 503 instead, so that a slow failure cannot outrun the timeout."""
        if not requests:
            return
        try:
            probabilities, lengths = self.forward([text for request in requests for text in request.texts])
            answer_all(requests, probabilities, self.signature, lengths)
            return
        except Exception as error:
            if len(requests) == 1:
                log.exception("forward failed for one request")
                requests[0].error = RequestError("inference_error", f"inference failed: {type(error).__name__}")
                return
            log.warning("forward failed over %d requests (%s: %s); trying each half alone", len(requests), type(error).__name__, error)
        middle = len(requests) // 2
        for half in (requests[:middle], requests[middle:]):
            if self.over_budget():
                for request in half:
                    request.error = Unavailable("batch_budget", f"a failed pass used this batch's {self.budget:.0f} s budget: retry")
            else:
                self.answer_isolating_failures(half)

    def add_explanations(self, requests: list[Parsed]) -> None:
        """Explanations for the explanation requests that were answered; one that fails fails alone (HTTP 500),
        one that would start after the batch's budget is answered 503."""
        for request in requests:
            if request.explain and request.error is None:
                if self.over_budget():
                    request.error = Unavailable("explanation_budget", f"explanations of this batch took over {self.budget:.0f} s: retry")
                    continue
                try:
                    request.explanations = [{**self.explainer(text).as_dict(), **self.signature.explained_core} for text in request.texts]
                except Exception as error:
                    log.exception("explanation failed for one request")
                    request.error = RequestError("inference_error", f"explanation failed: {type(error).__name__}")

    def forward(self, texts: list[str]) -> tuple[list[float], list[int] | None]:
        """The core's probabilities and the lengths the calibration reads, if it reads them (timed together by measure_cost)."""
        lengths = self.encoder.lengths(texts) if self.signature.reads_lengths else None
        return predict_proba(self.core, texts, self.encoder).tolist(), lengths

    def postprocess(self, parsed: list[Parsed]) -> list[dict]:
        for idx, request in enumerate(parsed):
            if request.error is not None:
                log.info("request %d answered %d (%s): %s", idx, request.error.status, request.error.kind, request.error)
                self.context.set_response_status(request.error.status, str(request.error), idx)
        self.prediction_metrics.record(parsed, self.signature)
        answers = []
        for idx, request in enumerate(parsed):
            self.context.set_response_content_type(idx, JSON)
            answers.append(encoded((explanation_body if request.explain else response_body)(request, self.signature)))
        log.info("batch answered in %.2f s (budget %.1f s)", time.monotonic() - self.batch_started, self.budget)  # tests read it
        return answers
