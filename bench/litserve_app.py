"""LitServe peer for the head-to-head: the TorchServe handler's contract and scoring function
(bench/model.py) behind LitServe's dynamic batching.

    .venv/bin/python bench/litserve_app.py --artifact build/v1/export --port 8000 \
        --workers 2 --max-batch-size 8 --batch-timeout 0.002

POST /predictions/sentiment with a JSON body ({"text": ...}, {"texts": [...]}, KServe v2; LitServe
parses the JSON in its API server), GET /health. LitServe runs `--workers` inference processes
(workers_per_device on one CPU "device"), each loading the model and answering batches of up to
--max-batch-size requests gathered for at most --batch-timeout seconds, and as many uvicorn API
server processes; TCP_NODELAY is set on their connections as for the FastAPI peer
(fastapi_app.NoDelayProtocol). fast_queue: ZeroMQ between the API servers and the workers,
LitServe's faster transport.
"""

import argparse
from pathlib import Path

import litserve as ls
from fastapi import HTTPException

from fastapi_app import NoDelayProtocol
from model import MODEL, TORCH_THREADS, Predictor
from sentiment.serving.payload import BadRequest


class SentimentAPI(ls.LitAPI):
    def __init__(self, artifact: Path, threads: int, **settings):
        super().__init__(**settings)
        self.artifact, self.threads = artifact, threads

    def setup(self, device) -> None:
        self.predictor = Predictor(self.artifact, self.threads)

    def decode_request(self, request):
        """The request's JSON, as LitServe's API server parsed it (TorchServe hands the handler the same)."""
        try:
            return self.predictor.parse(request, "application/json")
        except BadRequest as error:
            raise HTTPException(error.status, error.body()) from None

    def predict(self, batch: list) -> list[dict]:
        return self.predictor.answer(batch)

    def encode_response(self, answer: dict) -> dict:
        return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1, help="inference processes (workers_per_device)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.002, help="seconds")
    parser.add_argument("--fast-queue", type=int, choices=(0, 1), default=1)
    parser.add_argument("--torch-threads", type=int, default=TORCH_THREADS, help="per inference process")
    args = parser.parse_args()
    api = SentimentAPI(args.artifact.resolve(), args.torch_threads, max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout,
                       api_path=f"/predictions/{MODEL}")
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=args.workers, fast_queue=bool(args.fast_queue))
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False, http=NoDelayProtocol)


if __name__ == "__main__":
    main()
