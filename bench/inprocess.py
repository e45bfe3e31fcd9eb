"""In-process measurements, no server: the ceilings and where a TorchServe worker spends its time.

    .venv/bin/python bench/inprocess.py --model-dir EXTRACTED_MAR --bodies bodies.json [--onnx F] [--checkpoint D]

bench/run.py calls `measure()`, which runs this file in a process of its own. Everything runs the
code and weights of the extracted archive (bench/archive.py), one thread.

Ceilings, on batches of 1 and 64 texts of the request mix (texts/s): sentiment/serving/text.py encoding alone
(tokenise, features, vocabulary ids), and the forward pass alone on pre-encoded batches, for the
archive's TorchScript core, the eager model (--checkpoint, if it matches the archive), ONNX Runtime
(--onnx, if it matches) and TorchScript with 2 threads.

Times are CPU time of this process (time.process_time), so they hold up while other processes load
the machine; wall-clock figures are kept beside them in the ceilings.

Worker profile: the archive loaded the way a worker loads it (ts.model_loader.TsModelLoader), fed
inference messages in the frontend's binary frame format; for batches of 1, 8 and 32 requests it
times each step of the worker loop:

    decode     frame parsing + json.loads of every body (ts.protocol.otf_message_handler.retrieve_msg)
    preprocess, inference, postprocess   the handler's steps; inference split into encode (the
               handler's Encoder.batch) and forward (the handler's model), the rest is sigmoid etc.
    response   ts.service.create_predict_response (json.dumps of every answer, framing)
    predict    ts.service.Service.predict as a whole (handler + response + metrics)

Prints one JSON object.
"""

import argparse
import json
import logging
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

from archive import Served

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after the archive's folder: worker_message only
from bench.worker_message import MessageSocket, predict_message  # noqa: E402


def measure(model_dir: Path, bodies_file: Path, onnx: Path, checkpoint: Path, batch_sizes: tuple, seconds: float) -> dict:
    """This file in a process of its own (it imports the archive's modules); its JSON result."""
    run = subprocess.run([sys.executable, __file__, "--model-dir", str(model_dir), "--bodies", str(bodies_file), "--onnx", str(onnx),
                          "--checkpoint", str(checkpoint), "--batch-sizes", ",".join(map(str, batch_sizes)), "--seconds", str(seconds)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"inprocess.py failed: {run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- ceilings

def timed(fn, items: list, min_seconds: float) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call of fn over items (cycled), after a short warm-up, for at
    least min_seconds of wall time. CPU time (all threads of this process) is what the step costs;
    wall time also holds the waits for a core that other processes on the machine cause."""
    for item in items[:10]:
        fn(item)
    calls, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
    while True:
        fn(items[calls % len(items)])
        calls += 1
        wall = time.perf_counter() - wall0
        if wall >= min_seconds and calls >= min(len(items), 200):
            return (time.process_time() - cpu0) / calls, wall / calls


def per_batch(seconds: tuple[float, float], batch_size: int) -> dict:
    cpu, wall = seconds
    return {"cpu_ms_per_batch": round(cpu * 1e3, 4), "cpu_us_per_text": round(cpu / batch_size * 1e6, 2),
            "texts_per_cpu_s": round(batch_size / cpu, 1) if cpu > 0 else None,
            "wall_ms_per_batch": round(wall * 1e3, 4), "texts_per_wall_s": round(batch_size / wall, 1)}


def encode_steps(served: Served, texts: list[str]) -> dict:
    """Where encoding spends its time: CPU microseconds per text of the mix (one pass each). The
    encoder's per-word cache is warmed by one pass first, as it is in a worker that has run a while."""
    text, encoder = served.text, served.encoder
    [encoder(t) for t in texts]
    out = {}
    for name, fn in (("normalize", text.normalize), ("tokenize_incl_normalize", text.tokenize),
                     ("feature_strings_incl_tokenize", encoder.features), ("encode_warm_incl_tokenize", encoder)):
        started = time.process_time()
        produced = [fn(t) for t in texts]
        out[name] = round((time.process_time() - started) / len(texts) * 1e6, 1)
    out["ids_per_text"] = round(sum(map(len, produced)) / len(texts), 1)
    out["non_ascii_text_fraction"] = round(sum(not t.isascii() for t in texts) / len(texts), 3)
    return out


def eager_model(served: Served, checkpoint_dir: Path | None):
    """The eager model from the training checkpoint, if there is one and it is the archive's model."""
    if checkpoint_dir is None or not (checkpoint_dir / "checkpoint.pt").exists():
        return None, "no checkpoint"
    torch, core = served.torch, served.core
    try:
        checkpoint = torch.load(checkpoint_dir / "checkpoint.pt", weights_only=True)
        model = core.SentimentClassifier(core.ModelConfig(**checkpoint["config"]))
        model.load_state_dict(checkpoint["state_dict"])
        return model.eval(), None
    except Exception as error:  # a checkpoint of another model version or code version
        return None, f"checkpoint does not load with the archive's core: {error!r}"[:300]


def onnx_session(path: Path | None):
    if path is None or not path.exists():
        return None, "no ONNX file"
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), None


def ceilings(served: Served, texts: list[str], seconds: float, onnx: Path | None, checkpoint: Path | None) -> dict:
    import numpy

    torch = served.torch
    eager, eager_note = eager_model(served, checkpoint)
    session, onnx_note = onnx_session(onnx)

    def forward_onnx(tensors):
        (logits,) = session.run(None, {"ids": tensors[0].numpy(), "offsets": tensors[1].numpy()})
        return (1 / (1 + numpy.exp(-logits.astype(numpy.float64)))).tolist()

    # Only measure a core that computes the archive's function (same probabilities).
    probe = [served.encode(texts[i : i + 64]) for i in range(0, 640, 64)]
    reference = [served.forward(t) for t in probe]
    parity, cores = {}, [("torchscript", lambda t: served.forward(t), 1)]
    for name, fn in (("eager", eager and (lambda t: served.forward(t, eager))), ("onnxruntime", session and forward_onnx)):
        if fn is None:
            parity[name] = eager_note if name == "eager" else onnx_note
            continue
        diff = max(abs(a - b) for t, ref in zip(probe, reference) for a, b in zip(fn(t), ref))
        parity[name] = f"max |diff| vs TorchScript {diff:.1e}"
        if diff < 1e-4:
            cores.append((name, fn, 1))
        else:
            parity[name] += ": not the archive's model, skipped"
    cores.append(("torchscript_2_threads", lambda t: served.forward(t), 2))

    result = {"source": str(served.model_dir), "parity": parity, "encode_steps_us_per_text": encode_steps(served, texts), "batches": {}}
    for batch_size in (1, 64):
        batches = [texts[i : i + batch_size] for i in range(0, len(texts) - batch_size + 1, batch_size)]
        torch.set_num_threads(1)
        encode_s = timed(served.encode, batches, seconds)
        tensors = [served.encode(batch) for batch in batches]
        entry = {"texts_per_batch": batch_size, "encode": per_batch(encode_s, batch_size)}
        for name, fn, threads in cores:
            torch.set_num_threads(threads)
            forward_s = timed(fn, tensors, seconds)
            entry[name] = per_batch(forward_s, batch_size)
            entry[name]["encode_plus_forward_texts_per_cpu_s"] = round(batch_size / (forward_s[0] + encode_s[0]), 1)
        torch.set_num_threads(1)
        if "onnxruntime" in entry:
            entry["onnx_over_torchscript_forward_cpu"] = round(entry["onnxruntime"]["cpu_ms_per_batch"] / entry["torchscript"]["cpu_ms_per_batch"], 2)
        result["batches"][str(batch_size)] = entry
    return result


# ---------------------------------------------------------------- worker profile

def inference_message(bodies: list[bytes], first_id: int) -> bytes:
    """The frontend's message for a batch of JSON bodies, with the headers an aiohttp client sends."""
    return predict_message([
        {"id": f"{first_id + i:08d}-0000-0000-0000-000000000000", "content_type": "application/json", "body": body,
         "headers": {"Host": "127.0.0.1:8080", "User-Agent": "Python/3.11 aiohttp/3", "Accept": "*/*",
                     "Accept-Encoding": "gzip, deflate", "Content-Type": "application/json", "Content-Length": str(len(body))}}
        for i, body in enumerate(bodies)])


class Timer:
    """Wraps a callable and adds its CPU time to a bucket; nested calls of the same bucket count once."""

    active: set = set()

    def __init__(self, totals: dict, name: str, fn):
        self.totals, self.name, self.fn = totals, name, fn

    def __call__(self, *args, **kwargs):
        if self.name in Timer.active:
            return self.fn(*args, **kwargs)
        Timer.active.add(self.name)
        t0 = time.process_time()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.totals[self.name] = self.totals.get(self.name, 0.0) + time.process_time() - t0
            Timer.active.discard(self.name)

    def __getattr__(self, name):
        return getattr(self.fn, name)


def worker_profile(model_dir: Path, bodies: list[bytes], batch_sizes: list[int], seconds: float) -> dict:
    os.chdir(model_dir)
    # The worker logs to stdout for the frontend to parse; keep that cost, discard the text.
    logging.basicConfig(stream=open(os.devnull, "w"), level=logging.INFO, format="%(asctime)s [%(levelname)s] %(message)s", force=True)

    import ts
    import ts.service
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import TsModelLoader
    from ts.protocol.otf_message_handler import retrieve_msg

    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    name = manifest["model"]["modelName"]
    metrics_cache = MetricsCacheYamlImpl(config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics_cache.initialize_cache()
    metrics_cache.model_name = name
    service = TsModelLoader().load(name, str(model_dir), manifest["model"]["handler"], None, max(batch_sizes), None, True, metrics_cache)
    service.set_cl_socket(None)
    handler = service._entry_point.__self__

    totals: dict[str, float] = {}
    for step in ("preprocess", "inference", "postprocess"):
        setattr(handler, step, Timer(totals, step, getattr(handler, step)))
    handler.core = Timer(totals, "forward", handler.core)
    handler.encoder.batch = Timer(totals, "encode", handler.encoder.batch)
    ts.service.create_predict_response = Timer(totals, "response", ts.service.create_predict_response)

    results = {}
    for batch_size in batch_sizes:
        messages = [inference_message(bodies[i : i + batch_size], i) for i in range(0, len(bodies) - batch_size + 1, batch_size)]
        for message in messages[:20]:  # warm-up
            service.predict(retrieve_msg(MessageSocket(message))[1])
        totals.clear()
        batches, requests, statuses = 0, 0, set()
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or batches < 20:
            message = messages[batches % len(messages)]
            t0 = time.process_time()
            _, batch = retrieve_msg(MessageSocket(message))
            t1 = time.process_time()
            response = service.predict(batch)
            t2 = time.process_time()
            totals["decode"] = totals.get("decode", 0.0) + t1 - t0
            totals["predict"] = totals.get("predict", 0.0) + t2 - t1
            statuses.add(struct.unpack("!i", response[:4])[0])
            batches += 1
            requests += len(batch)
        totals["inference_other"] = totals.get("inference", 0.0) - totals.get("encode", 0.0) - totals.get("forward", 0.0)
        totals["predict_other"] = totals["predict"] - sum(totals.get(k, 0.0) for k in ("preprocess", "inference", "postprocess", "response"))
        worker_total = totals["decode"] + totals["predict"]
        results[str(batch_size)] = {
            "batches": batches, "requests": requests,
            "per_batch_ms": {k: round(v / batches * 1e3, 4) for k, v in totals.items()},
            "per_request_us": {k: round(v / requests * 1e6, 1) for k, v in totals.items()},
            "worker_total_per_request_us": round(worker_total / requests * 1e6, 1),
            "worker_ceiling_rps_per_core": round(requests / worker_total, 1),
            "batch_status_codes": sorted(statuses),
        }
    return {"handler": manifest["model"]["handler"], "batch_sizes": results,
            "note": "in-process, one thread, CPU time (robust to other load); excludes the Unix-socket send/recv and the frontend"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="the extracted archive")
    parser.add_argument("--bodies", type=Path, required=True, help="JSON list of request bodies (strings)")
    parser.add_argument("--onnx", type=Path, help="the ONNX export of the same model")
    parser.add_argument("--checkpoint", type=Path, help="the training folder with checkpoint.pt (eager model)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="worker profile batch sizes")
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args()
    model_dir = args.model_dir.resolve()
    bodies = json.loads(args.bodies.read_text())
    served = Served(model_dir)
    texts = [json.loads(b)["text"] for b in bodies]
    result = {"ceilings": ceilings(served, texts, args.seconds, args.onnx, args.checkpoint),
              "worker_profile": worker_profile(model_dir, [b.encode("utf-8") for b in bodies],
                                               [int(b) for b in args.batch_sizes.split(",")], args.seconds)}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
