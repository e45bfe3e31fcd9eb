"""The served model outside TorchServe, loaded from the archive (.mar) as the handler loads it.

The in-process measurements (inprocess.py) import the archive's sentiment.serving package (text, signature,
payload, core) and load model.pt / vocab.json / signature.json from the extracted archive, not from the working
tree: they run exactly the code and weights TorchServe serves, even while the working tree is being
changed or rebuilt.
"""

import importlib
import sys
import tempfile
import zipfile
from pathlib import Path

ARCHIVE_MODULES = ("text", "signature", "payload", "core")  # of sentiment.serving


def extract(mar: Path, into: Path | None = None) -> Path:
    into = Path(into) if into else Path(tempfile.mkdtemp(prefix="sentiment-archive-"))
    into.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(into)
    return into


class Served:
    """Encode and forward of one extracted archive (v1: text.Encoder and core.to_tensors)."""

    def __init__(self, model_dir: Path):
        import torch

        self.model_dir = Path(model_dir).resolve()
        if str(self.model_dir) not in sys.path:
            sys.path.insert(0, str(self.model_dir))
        self.modules = {}
        for name in ARCHIVE_MODULES:
            module = importlib.import_module(f"sentiment.serving.{name}")
            if Path(module.__file__).resolve().parents[2] != self.model_dir:
                raise ImportError(f"{name} was imported from {module.__file__}, not from the archive {self.model_dir}")
            self.modules[name] = module
        self.text, self.payload, self.core = self.modules["text"], self.modules["payload"], self.modules["core"]
        signature_module = self.modules["signature"]
        self.signature = signature_module.Signature.load(self.model_dir)
        self.encoder = self.text.Encoder(signature_module.load_vocab_index(self.model_dir, self.signature), self.signature.features)
        self.model = torch.jit.load(str(self.model_dir / self.signature.model_file)).eval()
        self.torch = torch

    def encode(self, texts: list[str]):
        return self.core.to_tensors(*self.encoder.batch(texts))

    def forward(self, tensors, model=None) -> list[float]:
        with self.torch.inference_mode():
            return self.torch.sigmoid((model or self.model)(*tensors)).tolist()
