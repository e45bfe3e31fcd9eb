"""Naive baseline for the benchmark: one FastAPI app in one uvicorn process, the model in memory.

    .venv/bin/python bench/naive_app.py --port 8000     # POST /predictions/sentiment {"text": "..."}

The same contract and code as the TorchServe handler: the archive's payload.parse_request,
text.py encoding, TorchScript core and response body ({"text": ...} -> {"label", "probability",
"model_version"}), loaded from the archive (bench/archive.py). No batching: the endpoint is
`async def`, so requests are predicted one at a time on the event loop. `--nodelay 0` turns
TCP_NODELAY off on every accepted connection to show the Nagle / delayed-ACK stall (asyncio
turns it on by default, and this app sets it explicitly).
"""

import argparse
import json
import shutil
import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from archive import Served, extract

ROOT = Path(__file__).resolve().parent.parent


def create_app(served: Served) -> FastAPI:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict:
        return {"status": "Healthy"}

    @app.post("/predictions/sentiment")
    async def predict(request: Request) -> Response:
        try:
            parsed = served.parse(await request.body(), request.headers.get("content-type"))
        except served.payload.RequestError as error:
            return Response(json.dumps(error.body()), status_code=error.status, media_type="application/json")
        probabilities = served.forward(served.encode(parsed.texts))
        return Response(json.dumps(served.response(parsed, probabilities)), media_type="application/json")

    return app


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
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--archive", type=Path, default=ROOT / "model_store" / "sentiment.mar")
    source.add_argument("--model-dir", type=Path, help="an already extracted archive")
    parser.add_argument("--nodelay", type=int, choices=(0, 1), default=1)
    parser.add_argument("--torch-threads", type=int, default=1, help="as the TorchServe handler (handler.TORCH_THREADS)")
    args = parser.parse_args()
    model_dir = args.model_dir or extract(args.archive)
    try:
        served = Served(model_dir)
        served.torch.set_num_threads(args.torch_threads)
        config = uvicorn.Config(create_app(served), host="127.0.0.1", port=args.port, http=protocol_with_nodelay(bool(args.nodelay)),
                                log_level="warning", access_log=False, lifespan="off")
        uvicorn.Server(config).run()
    finally:
        if args.model_dir is None:
            shutil.rmtree(model_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
