"""TorchServe's frontend -> worker PREDICT message, built in Python, and the handler loaded as a
worker loads it, so that a handler can be run exactly as a backend worker runs it
(ts.protocol.otf_message_handler.retrieve_msg decodes the message) without a frontend: the handler
and explanation unit tests and the worker profile of `make bench` use it."""

import io
import json
import struct
from pathlib import Path

END = struct.pack("!i", -1)  # ends a list: the headers of a request, its parameters, the requests


def field(value: bytes) -> bytes:
    return struct.pack("!i", len(value)) + value


def predict_message(requests: list[dict]) -> bytes:
    """b"I", then per request: its "id", its HTTP "headers", and one parameter: its "name" (default
    "body"), "content_type" and "body" (bytes)."""
    message = bytearray(b"I")
    for request in requests:
        message += field(request["id"].encode())
        for name, value in request.get("headers", {}).items():
            message += field(name.encode()) + field(value.encode())
        message += END
        message += field(request.get("name", "body").encode()) + field((request.get("content_type") or "").encode())
        message += field(request["body"]) + END
    return bytes(message + END)


class MessageSocket:
    """What retrieve_msg reads a message from: recv(n) over one prepared message."""

    def __init__(self, message: bytes):
        self.stream = io.BytesIO(message)

    def recv(self, n: int) -> bytes:
        return self.stream.read(n)


def handle(handler, context, requests: list[dict]) -> list:
    """As ts.service.Service.predict: a predict_message's bytes -> TorchServe's own decoding -> handler.handle;
    returns the answers as a client reads them. The handler hands the worker compact JSON bytes, which it
    sends as they are (anything else it would pretty-print)."""
    from ts.protocol.otf_message_handler import retrieve_msg
    from ts.service import Service

    cmd, batch = retrieve_msg(MessageSocket(predict_message(requests)))
    assert cmd == b"I"
    processors, input_batch, req_ids = Service.retrieve_data_for_inference(batch)
    context.request_ids, context.request_processor, context.metrics.request_ids = req_ids, processors, req_ids
    responses = handler.handle(input_batch, context)
    assert len(responses) == len(requests)
    assert all(isinstance(r, bytes) for r in responses) and all(context.get_response_content_type(i) == "application/json" for i in range(len(requests)))
    return [json.loads(r) for r in responses]


def load_handler(model_dir: Path, batch_size: int):
    """(SentimentHandler, Context) for an unpacked archive, initialised the way TorchServe's model
    loader does it: Service builds the Context, with the metrics cache of TorchServe's own metrics.yaml."""
    import ts
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.service import Service

    from sentiment.serving.handler import SentimentHandler

    manifest = json.loads((Path(model_dir) / "MAR-INF" / "MANIFEST.json").read_text())
    metrics = MetricsCacheYamlImpl(config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = manifest["model"]["modelName"]
    service = Service(manifest["model"]["modelName"], str(model_dir), manifest, None, None, batch_size, metrics_cache=metrics)
    handler = SentimentHandler()
    handler.initialize(service.context)
    return handler, service.context
