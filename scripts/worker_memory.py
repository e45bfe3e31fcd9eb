"""Where a v1 worker's memory goes: RSS after each step of what a TorchServe worker loads, in a
fresh Python process (the worker's own imports, then the handler's, then the model's files).

    .venv/bin/python scripts/worker_memory.py      # -> bench/results/worker_memory.json

From a clean tree only, like every README-bound results file (--allow-dirty: bench/results/tmp/).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.provenance import RESULTS, Provenance  # noqa: E402
from scripts import need  # noqa: E402

# Run in a fresh interpreter: each step's RSS (MB) after it, in load order.
STEPS = """
import json, sys, psutil
rss = lambda: round(psutil.Process().memory_info().rss / 2**20, 1)
steps = {"python": rss()}
import torch; steps["import torch"] = rss()
import ts.model_service_worker, ts.torch_handler.base_handler; steps["TorchServe worker modules"] = rss()
sys.path.insert(0, ROOT)
from sentiment.serving import handler; steps["handler modules"] = rss()
from sentiment.serving.signature import Signature, load_encoder
signature = Signature.load(EXPORT); encoder = load_encoder(EXPORT, signature); steps["vocabulary index"] = rss()
core = torch.jit.load(EXPORT + "/model.pt"); steps["TorchScript core"] = rss()
from sentiment.serving.explain import explainer_for
explainer = explainer_for(core, encoder, signature); steps["explainer"] = rss()
print(json.dumps(steps))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, default=ROOT / "build" / "v1" / "export")
    parser.add_argument("--allow-dirty", action="store_true")
    args = parser.parse_args()
    need(args.export / "signature.json", build="make export")
    run = Provenance(allow_dirty=args.allow_dirty)
    code = f"ROOT, EXPORT = {str(ROOT)!r}, {str(args.export)!r}\n" + STEPS
    steps = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout)
    names = list(steps)
    added = {name: round(steps[name] - steps[before], 1) for before, name in zip(names, names[1:])}
    for name in names[1:]:
        print(f"{name:28s} +{added[name]:6.1f} MB  -> {steps[name]:6.1f} MB")
    out = run.target(RESULTS / "worker_memory.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"provenance": run.record(), "rss_mb_after": steps, "added_mb": added}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
