"""TorchServe handler: an exported sentiment core (v1 NBSVM or v2 transformer) as a stateless serving function.

Per request (one TorchServe batch holds many): validate -> featurise (the model's own featuriser,
as in training) -> one forward pass for the whole batch -> sigmoid -> label. A bad request gets
its own HTTP 400 with a JSON body; the good requests batched with it are answered as usual.
Explanation requests (/explanations/..., KServe :explain) share the batch and its forward pass, and
then get which words made their prediction (explain.py). The signature in the archive says which
model it is; nothing here depends on the version.
"""

import logging
import time

import torch
from ts.torch_handler.base_handler import BaseHandler

from explain import explainer_for, max_texts
from model_def import predict_proba
from payload import BadRequest, Parsed, RequestError, Unavailable, answer_all, explanation_body, parse_request, response_body
from prediction_metrics import PredictionMetrics
from signature import Signature, load_encoder

log = logging.getLogger(__name__)

# Threads per worker unless model-config.yaml's `handler: {torch_threads: N}` says otherwise: one,
# because workers, not threads, use the cores (more threads only contend with the other workers).
TORCH_THREADS = 1
# After a batch's forward pass fails, its requests are retried one by one so that one request that
# breaks the model fails alone; this many failures in a row mean the model itself is broken, and
# the rest of the batch fails without more passes (a broken model costs a few passes, not N + 1).
MAX_FAILED_RETRIES = 2
# Explanations cost up to seconds each (v2). One that would start after this share of the model's
# responseTimeout into a batch is answered 503 (retry) instead, so that a batch of explanations never
# runs into the timeout, which would restart the worker and fail every request of the batch.
EXPLAIN_BUDGET = 1 / 3


class SentimentHandler(BaseHandler):
    def initialize(self, context):
        """Once per worker: TorchScript core (BaseHandler loads the archive's serialized file), signature, vocabulary."""
        super().initialize(context)
        model_config = getattr(context, "model_yaml_config", None) or {}
        settings = model_config.get("handler") or {}
        torch.set_num_threads(int(settings.get("torch_threads", TORCH_THREADS)))
        model_dir = context.system_properties["model_dir"]
        self.signature = Signature.load(model_dir)
        self.encoder = load_encoder(model_dir, self.signature)
        # model-config.yaml's `handler: {explain_steps: N}` overrides v2's Integrated Gradients steps (explain.STEPS).
        self.explainer = explainer_for(self.model, self.encoder, self.signature, settings.get("explain_steps"))
        self.explain_budget = float(model_config.get("responseTimeout", 120)) * EXPLAIN_BUDGET  # 120 s: TorchServe's default
        self.prediction_metrics = PredictionMetrics(context.metrics)
        self.initialized = True
        log.info("loaded %s v%s (%s, %d torch threads)", self.signature.model_name, self.signature.version,
                 self.signature.architecture, torch.get_num_threads())

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
                request = parse_request(body, self.request_content_type(idx, row), self.signature,
                                        max_texts(self.signature) if explain else None)
            except BadRequest as error:
                request = Parsed(error=error)
            request.explain = explain
            parsed.append(request)
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
        """One forward pass over every text of every valid request in the batch. If it fails, each
        request is retried alone (up to MAX_FAILED_RETRIES failures in a row), so one request that
        breaks the model fails alone (HTTP 500)."""
        valid = [request for request in parsed if request.error is None]
        try:
            probabilities = self.forward([text for request in valid for text in request.texts])
        except Exception:
            log.exception("batch forward failed; retrying its %d requests one by one", len(valid))
            self.retry_one_by_one(valid)
            self.add_explanations(valid)
            return parsed
        answer_all(valid, probabilities, self.signature)
        self.add_explanations(valid)
        return parsed

    def add_explanations(self, requests: list[Parsed]) -> None:
        """Explanations for the explanation requests that were answered; one that fails fails alone (HTTP 500),
        one that would start after the batch's time budget is answered 503."""
        for request in requests:
            if request.explain and request.error is None:
                if time.monotonic() - self.batch_started > self.explain_budget:
                    request.error = Unavailable("explanation_budget", f"explanations of this batch took over {self.explain_budget:.0f} s: retry")
                    continue
                try:
                    request.explanations = [self.explainer(text).as_dict() for text in request.texts]
                except Exception as error:
                    log.exception("explanation failed for one request")
                    request.error = RequestError("inference_error", f"explanation failed: {type(error).__name__}")

    def retry_one_by_one(self, requests: list[Parsed]) -> None:
        failed_in_a_row = 0
        for request in requests:
            if failed_in_a_row >= MAX_FAILED_RETRIES:
                request.error = RequestError("inference_error", f"inference failed: not retried after {MAX_FAILED_RETRIES} requests of its batch failed in a row")
                continue
            try:
                request.answer(self.forward(request.texts), self.signature)
                failed_in_a_row = 0
            except Exception as error:
                log.exception("forward failed for one request")
                request.error = RequestError("inference_error", f"inference failed: {type(error).__name__}")
                failed_in_a_row += 1

    def forward(self, texts: list[str]) -> list[float]:
        return predict_proba(self.model, texts, self.encoder).tolist()

    def postprocess(self, parsed: list[Parsed]) -> list[dict]:
        for idx, request in enumerate(parsed):
            if request.error is not None:
                log.info("request %d answered %d (%s): %s", idx, request.error.status, request.error.kind, request.error)
                self.context.set_response_status(request.error.status, str(request.error), idx)
        self.prediction_metrics.record(parsed, self.signature)
        return [(explanation_body if request.explain else response_body)(request, self.signature) for request in parsed]
