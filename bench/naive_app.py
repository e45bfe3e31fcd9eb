"""Naive baseline for the benchmark: one FastAPI app under one uvicorn process, the eager model in memory.

    .venv/bin/python bench/naive_app.py --port 8000            # POST /predictions/sentiment {"text": "..."}

Same contract as the TorchServe handler ({"text": ...} -> {"label", "probability", "model_version"},
validated by payload.parse_request, encoded by text.py), but no batching: the endpoint is `async def`,
so requests are predicted one at a time on the event loop. `--nodelay 0` turns TCP_NODELAY off on
every accepted connection to show the Nagle / delayed-ACK stall (asyncio turns it on by default).
"""

import argparse
import json
import logging
import socket
import sys
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI, Request, Response
from uvicorn.protocols.http.h11_impl import H11Protocol

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from export import load_checkpoint  # noqa: E402
from model_def import to_tensors  # noqa: E402
from payload import BadRequest, parse_request  # noqa: E402
from signature import Signature, load_vocab_index  # noqa: E402
from text import encode_batch  # noqa: E402

log = logging.getLogger("naive_app")


def create_app(build: Path, model_kind: str = "eager") -> FastAPI:
    export_dir = build / "export"
    signature = Signature.load(export_dir)
    index = load_vocab_index(export_dir, signature)
    if model_kind == "eager":
        model, _ = load_checkpoint(build)
    else:
        model = torch.jit.load(str(export_dir / signature.model_file)).eval()

    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict:
        return {"status": "Healthy"}

    @app.post("/predictions/sentiment")
    async def predict(request: Request) -> Response:
        try:
            parsed = parse_request(await request.body(), request.headers.get("content-type"), signature)
        except BadRequest as error:
            return Response(json.dumps(error_json(error)), status_code=getattr(error, "status", 400), media_type="application/json")
        with torch.inference_mode():
            probabilities = torch.sigmoid(model(*to_tensors(*encode_batch(parsed.texts, index, signature.ngram)))).tolist()
        predictions = [{"label": signature.label(p), "probability": round(p, 6)} for p in probabilities]
        version = {"model_version": signature.version}
        body = {"predictions": predictions, **version} if parsed.is_list else {**predictions[0], **version}
        return Response(json.dumps(body), media_type="application/json")

    return app


def error_json(error: BadRequest) -> dict:
    """The handler's error body (payload.py's, when it has one)."""
    if hasattr(error, "body"):
        return error.body()
    return {"code": 400, "type": "BadRequest", "kind": error.kind, "message": str(error)}


def protocol_with_nodelay(enabled: bool) -> type:
    """uvicorn's h11 protocol, with TCP_NODELAY set explicitly on each accepted connection."""

    class Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(enabled))
            super().connection_made(transport)

    return Protocol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--build", type=Path, default=ROOT / "build" / "v1")
    parser.add_argument("--model", choices=("eager", "torchscript"), default="eager")
    parser.add_argument("--nodelay", type=int, choices=(0, 1), default=1)
    parser.add_argument("--torch-threads", type=int, default=1, help="as the TorchServe handler (handler.TORCH_THREADS)")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    app = create_app(args.build, args.model)
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, http=protocol_with_nodelay(bool(args.nodelay)),
                            log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
