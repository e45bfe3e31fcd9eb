"""TorchServe handler: the exported sentiment core as a stateless serving function.

Per request (one TorchServe batch holds many): validate -> encode (text.py, as in training)
-> one forward pass for the whole batch -> sigmoid -> label. A bad request gets its own
HTTP 400 with a JSON body; the good requests batched with it are answered as usual.
"""

import logging

import torch
from ts.torch_handler.base_handler import BaseHandler

from model_def import to_tensors
from payload import BadRequest, Parsed, error_body, parse_request
from signature import Signature, load_vocab_index
from text import encode_batch

log = logging.getLogger(__name__)

TORCH_THREADS = 1  # the forward pass takes microseconds; more threads only contend with other workers


class SentimentHandler(BaseHandler):
    def initialize(self, context):
        """Once per worker: TorchScript core (BaseHandler loads the archive's serialized file), signature, vocabulary."""
        super().initialize(context)
        torch.set_num_threads(TORCH_THREADS)
        model_dir = context.system_properties["model_dir"]
        self.signature = Signature.load(model_dir)
        self.index = load_vocab_index(model_dir, self.signature)
        self.initialized = True
        log.info("loaded %s v%s (%d features)", self.signature.model_name, self.signature.version, len(self.index))

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
        name = "body" if "body" in row else "data"
        header = self.context.get_request_header(idx, name)
        return header.get("content-type") if isinstance(header, dict) else header

    def inference(self, parsed: list[Parsed]) -> tuple[list[Parsed], list[float]]:
        """One forward pass over every text of every valid request in the batch."""
        texts = [text for request in parsed for text in request.texts]
        if not texts:
            return parsed, []
        with torch.inference_mode():
            logits = self.model(*to_tensors(*encode_batch(texts, self.index, self.signature.ngram)))
        return parsed, torch.sigmoid(logits).tolist()

    def postprocess(self, inference_output: tuple[list[Parsed], list[float]]) -> list[dict]:
        parsed, probabilities = inference_output
        responses, cursor = [], 0
        for idx, request in enumerate(parsed):
            if request.error is not None:
                log.info("request %d rejected (%s): %s", idx, request.error.kind, request.error)
                self.context.set_response_status(400, str(request.error), idx)
                responses.append(error_body(request.error))
                continue
            predictions = [self.prediction(p) for p in probabilities[cursor : cursor + len(request.texts)]]
            cursor += len(request.texts)
            version = {"model_version": self.signature.version}
            responses.append({"predictions": predictions, **version} if request.is_list else {**predictions[0], **version})
        return responses

    def prediction(self, probability: float) -> dict:
        return {"label": self.signature.label(probability), "probability": round(probability, 6)}
