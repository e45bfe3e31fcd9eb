"""TorchServe handler: the exported sentiment core as a stateless serving function.

Per request (one TorchServe batch holds many): validate -> encode (text.py, as in training)
-> one forward pass for the whole batch -> sigmoid -> label. A bad request gets its own
HTTP 400 with a JSON body; the good requests batched with it are answered as usual.
"""

import logging

import torch
from ts.torch_handler.base_handler import BaseHandler

from model_def import predict_proba
from payload import BadRequest, Parsed, RequestError, parse_request, response_body
from prediction_metrics import PredictionMetrics
from signature import Signature, load_vocab_index
from text import Encoder

log = logging.getLogger(__name__)

TORCH_THREADS = 1  # the forward pass takes microseconds; more threads only contend with other workers


class SentimentHandler(BaseHandler):
    def initialize(self, context):
        """Once per worker: TorchScript core (BaseHandler loads the archive's serialized file), signature, vocabulary."""
        super().initialize(context)
        torch.set_num_threads(TORCH_THREADS)
        model_dir = context.system_properties["model_dir"]
        self.signature = Signature.load(model_dir)
        self.encoder = Encoder(load_vocab_index(model_dir, self.signature), self.signature.features)
        self.prediction_metrics = PredictionMetrics(context.metrics)
        self.initialized = True
        log.info("loaded %s v%s (%d features)", self.signature.model_name, self.signature.version, len(self.encoder.index))

    def preprocess(self, data: list[dict]) -> list[Parsed]:
        parsed = []
        for idx, row in enumerate(data):
            body = row.get("body", row.get("data")) if isinstance(row, dict) else row
            try:
                parsed.append(parse_request(body, self.request_content_type(idx, row), self.signature))
            except BadRequest as error:
                parsed.append(Parsed(error=error))
        return parsed

    def request_content_type(self, idx: int, row: dict) -> str | None:
        """The Content-Type of the body parameter; form-encoded bodies arrive as fields, not a body."""
        if not any(name in row for name in ("body", "data")):
            return "application/x-www-form-urlencoded"
        header = self.context.get_request_header(idx, "body" if "body" in row else "data")
        return header.get("content-type") if isinstance(header, dict) else header

    def inference(self, parsed: list[Parsed]) -> list[Parsed]:
        """One forward pass over every text of every valid request in the batch. If it fails, each
        request is retried alone, so one request that breaks the model fails alone (HTTP 500)."""
        valid = [request for request in parsed if request.error is None]
        try:
            probabilities = self.forward([text for request in valid for text in request.texts])
        except Exception:
            log.exception("batch forward failed; retrying its %d requests one by one", len(valid))
            for request in valid:
                try:
                    request.probabilities = self.forward(request.texts)
                except Exception as error:
                    log.exception("forward failed for one request")
                    request.error = RequestError("inference_error", f"inference failed: {type(error).__name__}")
            return parsed
        cursor = 0
        for request in valid:
            request.probabilities = probabilities[cursor : cursor + len(request.texts)]
            cursor += len(request.texts)
        return parsed

    def forward(self, texts: list[str]) -> list[float]:
        return predict_proba(self.model, texts, self.encoder).tolist()

    def postprocess(self, parsed: list[Parsed]) -> list[dict]:
        for idx, request in enumerate(parsed):
            if request.error is not None:
                log.info("request %d answered %d (%s): %s", idx, request.error.status, request.error.kind, request.error)
                self.context.set_response_status(request.error.status, str(request.error), idx)
        self.prediction_metrics.record(parsed, self.signature)
        return [response_body(request, self.signature) for request in parsed]
