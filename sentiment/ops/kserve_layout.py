"""Build the model-storage layout that KServe's TorchServe runtime (kserve-torchserve) expects:

    build/kserve/
      model-store/sentiment.mar       the archive, named after the model (TorchServe's model name)
      config/config.properties        TorchServe settings for the pod, with a model_snapshot
      config/log4j2.xml               the repository's logging (no access log, frontend at INFO), via vmargs

    python -m sentiment.ops.kserve_layout --mar model_store/sentiment.mar --out build/kserve

Copy the folder to the bucket or PVC that deploy/kserve/inference-service.yaml names in
storageUri; KServe's storage initializer puts it at /mnt/models, and the runtime starts
`torchserve --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`.

The settings start from the repository's config.properties (limits, metrics, allowed_urls) and apply
KServe's conventions on top: KServe's own model server (the kserve wrapper) in the same container
takes client traffic on 8080 and forwards it to TorchServe on 8085 over loopback, so TorchServe's
inference and management APIs (both on 127.0.0.1:8085) and its gRPC ports (7070/7071) listen on
127.0.0.1 only: nothing outside the pod can reach them, so no one on the cluster network can scale,
describe or unregister the model. Only the metrics API (8082, the port the runtime's Prometheus
annotations name) listens on every interface, for scraping. Token authorization stays off in the pod
(see KSERVE below for why loopback is the boundary), TS_* environment variables are honoured, there
is no per-model pip install, the model-control API is off, and the models are listed in a
model_snapshot instead of load_models. The snapshot's worker and batching settings come from the
archive's own model-config.yaml, so the pod serves exactly as the archive was built to.
"""

import argparse
import json
import shutil
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
from sentiment.ops.properties import read_properties

MODEL_STORE = "/mnt/models/model-store"  # where KServe's storage initializer puts <storageUri>/model-store
CONFIG_PATH = "config/config.properties"
LOG_CONFIG_PATH = "config/log4j2.xml"
MAR_DIR = "model-store"

# Taken over unchanged from config.properties (everything else there is per-machine or set below).
KEPT = ("allowed_urls", "metrics_mode", "model_metrics_auto_detect",
        "max_request_size", "max_response_size", "default_response_timeout")

LOOPBACK = "127.0.0.1"

KSERVE = {
    # KServe's TorchServe ports: both REST APIs on 8085 (the kserve wrapper in the container serves
    # 8080 and forwards to the inference_address it reads from this file), metrics on 8082, gRPC on
    # 7070/7071. Inference, management and gRPC listen on loopback only: the wrapper, in the same
    # container, is their only client, and on any other interface anyone on the cluster network could
    # scale the model to zero or describe it, bypassing KServe.
    "inference_address": f"http://{LOOPBACK}:8085",
    "management_address": f"http://{LOOPBACK}:8085",
    "grpc_inference_address": LOOPBACK,
    "grpc_management_address": LOOPBACK,
    "grpc_inference_port": "7070",
    "grpc_management_port": "7071",
    # Metrics alone on every interface, for Prometheus: read-only counters and histograms.
    "metrics_address": "http://0.0.0.0:8082",
    "enable_metrics_api": "true",
    # Token authorization off, deliberately and explicitly (not inherited from the local config).
    # The APIs it would guard are reachable only from inside the pod (loopback), and their client is
    # the wrapper: TorchServe generates its keys inside the pod at start (key_file.json) and expires
    # them every 60 minutes, so the manifest cannot hand them to the wrapper. Authenticate clients
    # where they enter, at KServe's ingress.
    "disable_token_authorization": "true",
    # The runtime passes settings as TS_* environment variables (e.g. TS_SERVICE_ENVELOPE, see below).
    "enable_envvars_config": "true",
    # The archive carries no requirements.txt; the runtime image has torch and our imports.
    "install_py_dep_per_model": "false",
    # Models come from the snapshot below and are replaced by rolling out a new InferenceService
    # revision, never registered at run time: the model-control API stays off in the cluster.
    "enable_model_api": "false",
    "number_of_netty_threads": "4",
    "job_queue_size": "100",
    "model_store": MODEL_STORE,
    # The runtime starts torchserve without --log-config: the JVM reads the layout's log4j2.xml through vmargs.
    "vmargs": f"-Dlog4j.configurationFile=file:///mnt/models/{LOG_CONFIG_PATH}",
}

ENVELOPE_NOTE = """\
# No service_envelope (and the InferenceService blanks TS_SERVICE_ENVELOPE, which KServe would
# otherwise set to kservev2 for protocolVersion v2): handler.py reads and answers the KServe v2
# (Open Inference Protocol) body itself. TorchServe's kservev2 envelope would break it: it parses
# only the first request of a batch (body_list[0]) and keeps only the first element of a BYTES
# input, so with the archive's batching (batchSize in the snapshot below) the other requests of a
# batch, and every text after the first, would be lost.
"""


def read_manifest(mar: Path) -> dict:
    with zipfile.ZipFile(mar) as archive:
        return json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]


def read_model_config(mar: Path, manifest: dict) -> dict:
    """The archive's packed model-config.yaml (torch-model-archiver --config-file), or {}."""
    if not manifest.get("configFile"):
        return {}
    with zipfile.ZipFile(mar) as archive:
        return yaml.safe_load(archive.read(manifest["configFile"])) or {}


def model_snapshot(name: str, version: str, mar_name: str, model_config: dict) -> dict:
    """TorchServe's startup snapshot format (what KServe's examples put in model_snapshot)."""
    entry = {"defaultVersion": True, "marName": mar_name}
    for key, default in (("minWorkers", 1), ("maxWorkers", 1), ("batchSize", 1), ("maxBatchDelay", 100), ("responseTimeout", 120)):
        entry[key] = int(model_config.get(key, default))
    return {"name": "startup.cfg", "modelCount": 1, "models": {name: {version: entry}}}


def config_properties(base: dict, snapshot: dict) -> str:
    settings = {key: base[key] for key in KEPT if key in base}
    settings.update(KSERVE)
    settings["model_snapshot"] = json.dumps(snapshot, separators=(",", ":"))
    lines = ["# TorchServe settings for KServe's TorchServe runtime; written by sentiment/ops/kserve_layout.py.",
             "# Mounted at /mnt/models/config/config.properties; the archives at " + MODEL_STORE + ".",
             ENVELOPE_NOTE.rstrip("\n")]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def build(mar: Path, out: Path, base_config: Path) -> dict:
    """Write the layout into `out` (replacing an older one); returns the snapshot entry written."""
    manifest = read_manifest(mar)
    name, version = manifest["modelName"], manifest["modelVersion"]
    mar_name = f"{name}.mar"
    snapshot = model_snapshot(name, version, mar_name, read_model_config(mar, manifest))

    shutil.rmtree(out, ignore_errors=True)
    (out / MAR_DIR).mkdir(parents=True)
    (out / "config").mkdir()
    shutil.copyfile(mar, out / MAR_DIR / mar_name)
    (out / CONFIG_PATH).write_text(config_properties(read_properties(base_config), snapshot))
    shutil.copyfile(ROOT / "log4j2.xml", out / LOG_CONFIG_PATH)
    return snapshot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mar", type=Path, default=ROOT / "model_store" / "sentiment.mar")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "kserve")
    parser.add_argument("--config", type=Path, default=ROOT / "config.properties", help="base TorchServe config")
    args = parser.parse_args()
    snapshot = build(args.mar, args.out, args.config)
    (name, versions), = snapshot["models"].items()
    (version, entry), = versions.items()
    print(f"built {args.out}: {MAR_DIR}/{entry['marName']} ({name} v{version}), {CONFIG_PATH}")


if __name__ == "__main__":
    main()
