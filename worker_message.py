"""TorchServe's frontend -> worker PREDICT message, built in Python, so that a handler can be run
exactly as a backend worker runs it (ts.protocol.otf_message_handler.retrieve_msg decodes it)
without a frontend: the handler unit tests and the worker profile of `make bench` use it."""

import io
import struct

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
