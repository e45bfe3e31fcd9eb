"""FastAPI + uvicorn peer for the head-to-head: the TorchServe handler's contract and scoring
function (bench/model.py), one request at a time per worker process (the endpoint is `async def`:
each worker predicts on its own event loop, no batching).

    BENCH_ARTIFACT=build/v1/export .venv/bin/python -m uvicorn fastapi_app:create_app --factory \
        --app-dir bench --http fastapi_app:NoDelayProtocol --workers 2 --host 127.0.0.1 --port 8000

POST /predictions/sentiment ({"text": ...}, {"texts": [...]}, text/plain, KServe v2), GET /ping.
BENCH_TORCH_THREADS sets the threads per worker (default: model.TORCH_THREADS).

On asyncio's event loop, `uvicorn --workers N` leaves TCP_NODELAY off on the connections it
accepts (each worker serves sockets handed over by the supervisor), and a client that waits for a
whole answer before sending the next request then stalls ~44 ms on every one (Nagle + delayed
ACK); uvloop, which `--loop auto` picks where it is installed, sets it itself. NoDelayProtocol is
uvicorn's httptools protocol (what `--http auto` picks) setting it on every connection whatever
the loop; the benchmark measures both loops once without it. With BENCH_READY_DIR set, each worker writes a file
there named by its pid once its model is loaded, so a launcher can wait for all of them.
"""

import json
import os
import socket
from pathlib import Path

from fastapi import FastAPI, Request, Response
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from model import MODEL, TORCH_THREADS, Predictor
from sentiment.serving.payload import BadRequest


def create_app() -> FastAPI:
    predictor = Predictor(Path(os.environ["BENCH_ARTIFACT"]), int(os.environ.get("BENCH_TORCH_THREADS", TORCH_THREADS)))
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict:
        return {"status": "Healthy"}

    @app.post(f"/predictions/{MODEL}")
    async def predict(request: Request) -> Response:
        try:
            parsed = predictor.parse(await request.body(), request.headers.get("content-type"))
        except BadRequest as error:
            return Response(json.dumps(error.body()), status_code=error.status, media_type="application/json")
        (answer,) = predictor.answer([parsed])
        return Response(json.dumps(answer), media_type="application/json")

    if os.environ.get("BENCH_READY_DIR"):
        (Path(os.environ["BENCH_READY_DIR"]) / str(os.getpid())).touch()
    return app


class NoDelayProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with TCP_NODELAY set on each accepted connection."""

    def connection_made(self, transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
