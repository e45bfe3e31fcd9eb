"""The model under test, in one place: which artifact and archive a model version is, the serving
settings its archive ships, and how the peers (bench/fastapi_app.py, bench/litserve_app.py) answer
a request with it.

A model version N is build/vN/export, which batch_predict.load_core turns into the scoring function
`texts -> probabilities` (the handler's: the model's featuriser, the exported core, sigmoid), and
its archive model_store/sentiment.mar (N = 1) or sentiment_vN.mar, which TorchServe serves with the
model-config.yaml packed in it. v2 (a transformer with the same `texts -> probabilities` entry
point) plugs in here and in batch_predict.load_core, nowhere else in bench/.
"""

import json
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from sentiment.serving.payload import answer_all, parse_request, response_body  # noqa: E402

MODEL = "sentiment"
TORCH_THREADS = 1  # per serving process unless the archive's config says otherwise, as handler.TORCH_THREADS
INPROCESS_VERSIONS = {"1"}  # bench/inprocess.py (ceilings, worker profile) measures v1's n-gram featuriser


def artifact(version: str) -> Path:
    """The exported artifact of a model version: what the peers load."""
    return ROOT / "build" / f"v{version}" / "export"


def archive(version: str) -> Path:
    """The TorchServe archive of a model version (the Makefile's names)."""
    return ROOT / "model_store" / (f"{MODEL}.mar" if str(version) == "1" else f"{MODEL}_v{version}.mar")


def shipped_config(mar: Path) -> dict:
    """The model-config.yaml packed into an archive (workers, batchSize, maxBatchDelay, handler settings)."""
    with zipfile.ZipFile(mar) as packed:
        manifest = json.loads(packed.read("MAR-INF/MANIFEST.json"))
        name = manifest["model"].get("configFile")
        return yaml.safe_load(packed.read(name)) if name else {}


def torch_threads(config: dict) -> int:
    """Threads per serving process: the handler's rule (model-config.yaml `handler: {torch_threads}`)."""
    return int(((config or {}).get("handler") or {}).get("torch_threads", TORCH_THREADS))


class Predictor:
    """Request bodies in, response bodies out, as the TorchServe handler answers them: sentiment/serving/payload.py
    parses and validates, the scoring function scores every text of a batch of requests in one
    call, sentiment/serving/payload.py labels and writes the answers."""

    def __init__(self, artifact_dir: Path, threads: int = TORCH_THREADS):
        import torch  # here, not at the top: bench/run.py imports this module only for the paths above
        from sentiment.ops.batch_predict import load_core

        torch.set_num_threads(threads)
        self.score = load_core(str(artifact_dir))
        self.signature = self.score.signature

    def parse(self, body, content_type: str | None):
        """payload.Parsed; raises payload.BadRequest (its .status and .body() are the answer)."""
        return parse_request(body, content_type, self.signature)

    def answer(self, requests: list) -> list[dict]:
        """Response bodies for a batch of parsed requests: one call of the scoring function."""
        texts = [text for request in requests for text in request.texts]
        answer_all(requests, self.score(texts), self.signature, self.score.lengths(texts) if self.signature.reads_lengths else None)
        return [response_body(request, self.signature) for request in requests]


def scoring_ceiling(artifact_dir: Path, bodies: dict[str, list[str]], batch_sizes=(1, 8, 32), seconds: float = 1.0) -> dict:
    """In-process texts per CPU-second of the scoring function (featurise, forward, sigmoid) on one
    thread, per body kind and batch size: all that batching can save inside one worker, with no
    server around it. On a CPU a transformer's forward costs about the same per token at any batch
    size, so this bounds what any server's batching can win."""
    import time

    import torch
    from sentiment.ops.batch_predict import load_core

    torch.set_num_threads(1)
    score = load_core(str(artifact_dir))
    out = {}
    for kind, texts in bodies.items():
        out[kind] = {}
        for size in batch_sizes:
            done, started = 0, time.process_time()
            while time.process_time() - started < seconds:
                start = (done * size) % len(texts)
                score((texts * 2)[start : start + size])
                done += 1
            out[kind][str(size)] = round(done * size / (time.process_time() - started), 1)
    return {"texts_per_cpu_s": out, "threads": 1, "note": " ".join(scoring_ceiling.__doc__.split())}
