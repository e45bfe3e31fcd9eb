"""Which runtime runs the served core, as the signature names it: the one path by which the handler, batch
scoring, Spark and the benchmarks restore a core. Either runtime is a callable `core(*encoder inputs) ->
logits` (a float tensor), so `core.predict_proba` and everything above it never ask which one it is.

    torchscript   model.pt, float32: what BaseHandler loads; also the core explanations differentiate
    onnxruntime   model.onnx (float32) or model.int8.onnx (int8 dynamic quantization), with the session
                  options the signature records (threads per worker, graph optimisation level)

TorchServe 0.12's BaseHandler opens an ONNX serialized file itself (`setup_ort_session`), but with one
intra-op thread per logical CPU in every worker: 2 workers on 2 cores would run 4 threads and contend,
and the options measured best here (bench/results/ort_grid.json) could not be set. So the archive's
serialized file stays model.pt and the handler opens the ONNX core here.
"""

from pathlib import Path

import torch

from sentiment.serving.signature import ONNXRUNTIME, TORCHSCRIPT, Signature


class OnnxCore:
    """An ONNX core behind the same call as a torch core: `core(*encoder.inputs(texts)) -> logits`."""

    def __init__(self, path: Path, signature: Signature, threads: int | None = None, optimization: str | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: the Loop that EmbeddingBag exports to draws harmless graph warnings
        options.intra_op_num_threads = threads or signature.runtime.get("intra_op_threads", 1)
        options.inter_op_num_threads = 1
        level = optimization or signature.runtime.get("graph_optimization_level", "ORT_ENABLE_ALL")
        options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [spec["name"] for spec in signature.inputs]

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {name: x.numpy() for name, x in zip(self.names, inputs)})
        return torch.from_numpy(logits)


def load_torchscript(folder: Path, signature: Signature) -> torch.jit.ScriptModule:
    """The float32 TorchScript core (model.pt), in eval mode: served when the signature says so, explained always."""
    return torch.jit.load(str(Path(folder) / signature.model_file), map_location="cpu").eval()


def load_core(folder: Path, signature: Signature, torchscript: torch.jit.ScriptModule | None = None, threads: int | None = None):
    """The core the signature serves, from an export folder or an unpacked archive (`torchscript`: model.pt
    already loaded, as BaseHandler does, reused when it is the served core)."""
    runtime = signature.runtime["name"]
    if runtime == TORCHSCRIPT:
        return torchscript if torchscript is not None else load_torchscript(folder, signature)
    if runtime == ONNXRUNTIME:
        return OnnxCore(Path(folder) / signature.runtime["file"], signature, threads)
    raise ValueError(f"signature names runtime {runtime!r}: this code serves {TORCHSCRIPT} and {ONNXRUNTIME}")
