"""KServe: the InferenceService manifest, the storage layout it points at (sentiment/ops/kserve_layout.py),
and the Open Inference Protocol v2 round trip on a real TorchServe, including the layout's own config."""

import ipaddress
import json
import re
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import psutil
import pytest
import requests
import yaml

from sentiment.ops.torchserve import ROOT, LocalTorchServe, TorchServeAdmin, free_port
from sentiment.ops.properties import read_properties

MANIFEST = ROOT / "deploy" / "kserve" / "inference-service.yaml"
MAR = ROOT / "model_store" / "sentiment.mar"
MOUNT = "/mnt/models"  # where KServe's storage initializer puts the storageUri folder
RUNTIME_CONFIG = "config/config.properties"  # the runtime starts torchserve --ts-config=/mnt/models/<this>
RUNTIME_STORE = "model-store"  # ... and --model-store=/mnt/models/<this>

TEXTS = [
    "A gorgeous, moving film with a wonderful cast and a smart, funny script.",
    "A dull, lifeless mess: boring, predictable and badly acted.",
    "One of the most beautiful and touching movies of the year; a triumph.",
    "The worst film of the year, a tedious waste of time with a stupid plot.",
]


def v2_body(texts, request_id=None):
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
    return {"id": request_id, **body} if request_id else body


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def layout(export_dir, tmp_path_factory):
    """What `make kserve-layout` builds, from the shipped archive, in a private folder."""
    out = tmp_path_factory.mktemp("kserve") / "layout"
    subprocess.run([sys.executable, "-m", "sentiment.ops.kserve_layout", "--mar", str(MAR), "--out", str(out)],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return out


@pytest.fixture(scope="module")
def layout_config(layout) -> dict:
    return read_properties(layout / RUNTIME_CONFIG)


def snapshot_models(config: dict) -> dict:
    return json.loads(config["model_snapshot"])["models"]


# --- manifest and layout --------------------------------------------------------------------------

def test_manifest_is_a_v2_pytorch_inference_service(manifest):
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1"
    assert manifest["kind"] == "InferenceService"
    assert manifest["metadata"]["name"] == "sentiment"
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch"
    assert model["protocolVersion"] == "v2"
    assert urlparse(model["storageUri"]).scheme in ("pvc", "s3", "gs", "azure", "https")
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(model["resources"][kind])


def test_manifest_switches_the_runtime_envelope_off(manifest, layout_config):
    """The runtime sets TS_SERVICE_ENVELOPE (kservev2 under protocol v2) and the config honours TS_*
    variables: the manifest must blank it, and the config must not name an envelope itself."""
    env = {e["name"]: e["value"] for e in manifest["spec"]["predictor"]["model"]["env"]}
    assert env["TS_SERVICE_ENVELOPE"] == ""
    assert layout_config["enable_envvars_config"] == "true"
    assert "service_envelope" not in layout_config


def test_layout_holds_every_file_the_runtime_reads(layout, layout_config):
    assert (layout / RUNTIME_CONFIG).is_file()
    assert layout_config["model_store"] == f"{MOUNT}/{RUNTIME_STORE}"
    models = snapshot_models(layout_config)
    assert list(models) == ["sentiment"]
    for versions in models.values():
        for entry in versions.values():
            assert (layout / RUNTIME_STORE / entry["marName"]).is_file()
    assert sorted(p.name for p in (layout / RUNTIME_STORE).iterdir()) == ["sentiment.mar"]
    assert (layout / RUNTIME_STORE / "sentiment.mar").read_bytes() == MAR.read_bytes()


def test_layout_config_follows_kserve_conventions(layout_config):
    assert layout_config["inference_address"] == "http://127.0.0.1:8085"
    assert layout_config["management_address"] == "http://127.0.0.1:8085"
    assert layout_config["metrics_address"] == "http://0.0.0.0:8082"
    assert layout_config["install_py_dep_per_model"] == "false"
    assert layout_config["metrics_mode"] == "prometheus"
    assert layout_config["allowed_urls"] == "^$"
    for key in ("max_request_size", "max_response_size", "default_response_timeout"):  # the limits travel with it
        assert layout_config[key] == read_properties(ROOT / "config.properties")[key], key
    assert "load_models" not in layout_config  # the snapshot loads the model


def host_of(setting: str) -> str:
    """The host a TorchServe address setting binds: a URL (inference_address) or a bare host (grpc_*)."""
    return urlparse(setting).hostname if "://" in setting else setting


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


def test_layout_config_keeps_inference_and_management_on_loopback(layout_config, manifest):
    """In the pod only the kserve wrapper (same container) may call TorchServe's inference and
    management APIs: on any other interface anyone on the cluster network could scale the model to
    zero or describe it, unauthenticated (token authorization is off). Only metrics may listen
    beyond loopback, for Prometheus."""
    api_keys = ("inference_address", "management_address", "grpc_inference_address", "grpc_management_address")
    for key in api_keys:  # all named explicitly, not left to TorchServe's defaults
        assert is_loopback(host_of(layout_config[key])), (key, layout_config[key])
    other = [k for k in layout_config if k.endswith("_address") and k not in api_keys + ("metrics_address",)]
    assert not other, f"an address this test does not know: {other}"
    assert layout_config["disable_token_authorization"] == "true" and layout_config["enable_model_api"] == "false"
    # enable_envvars_config lets TS_* variables override the file: the manifest must not move an address.
    env = [e["name"] for e in manifest["spec"]["predictor"]["model"].get("env", [])]
    assert not [name for name in env if name.startswith("TS_") and ("ADDRESS" in name or "PORT" in name)], env


def test_comments_quote_the_shipped_worker_and_batch_settings():
    """Comments in the deployment files that quote worker or batching numbers agree with
    model-config.yaml (the archive's settings, which the layout's snapshot copies)."""
    shipped = yaml.safe_load((ROOT / "model-config.yaml").read_text())
    words = {"one": 1, "two": 2, "three": 3, "four": 4}
    patterns = {  # what a phrase claims -> the model-config.yaml key it must match
        r"\b(minWorkers|maxWorkers|batchSize|maxBatchDelay)[:= ]+(\d+)": None,
        r"\b(\d+|one|two|three|four) workers?\b": "minWorkers",
        r"\bbatch(?:es)?(?: size)?(?: of)? (\d+)\b": "batchSize",
        r"\b(\d+) ?ms(?: batch)? delay\b|\bbatch \d+ / (\d+) ?ms\b": "maxBatchDelay",
    }
    files = [MANIFEST, ROOT / "sentiment" / "ops" / "kserve_layout.py", ROOT / "config.properties"]
    wrong = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, key in patterns.items():
                for match in re.finditer(pattern, line, re.IGNORECASE):
                    groups = [g for g in match.groups() if g]
                    claimed_key = key or next(k for k in shipped if k.lower() == groups[0].lower())
                    value = groups[-1].lower()
                    if int(words.get(value, value)) != shipped[claimed_key]:
                        wrong.append(f"{path.name}:{number}: {match.group(0)!r}, model-config.yaml has {claimed_key}: {shipped[claimed_key]}")
    assert not wrong, "\n".join(wrong)


def test_read_properties_reads_what_torchserve_reads(tmp_path):
    """TorchServe reads config.properties with java.util.Properties: `key: value` and `key value`
    set a key too, `!` starts a comment, a backslash continues a line. A reader that missed these
    could pass a security check on a file TorchServe reads differently."""
    path = tmp_path / "config.properties"
    path.write_text("! a comment\n  # another\nmanagement_address: http://0.0.0.0:8081\ninference_address http://0.0.0.0:8080\n"
                    "allowed_urls=^$\nmodel_snapshot={\"a\": \\\n    1}\nkey\\=with\\:escapes = x\\u0041\n")
    assert read_properties(path) == {"management_address": "http://0.0.0.0:8081", "inference_address": "http://0.0.0.0:8080",
                                     "allowed_urls": "^$", "model_snapshot": '{"a": 1}', "key=with:escapes": "xA"}


def test_snapshot_matches_the_archive(layout_config):
    with zipfile.ZipFile(MAR) as archive:
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]
        packed = yaml.safe_load(archive.read(manifest["configFile"]))
    (version, entry), = snapshot_models(layout_config)[manifest["modelName"]].items()
    assert version == manifest["modelVersion"]
    assert entry["defaultVersion"] is True
    for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"):
        assert entry[key] == packed[key], key


# --- the layout's config on a real TorchServe -----------------------------------------------------

@pytest.fixture(scope="module")
def layout_server(layout, layout_config):
    """TorchServe started as the runtime starts it (the layout's config and model store, with
    TS_SERVICE_ENVELOPE blank as in the manifest), on free ports but on the layout's own hosts, with
    inference and management sharing one port as they share 8085 in the pod. Metrics alone are moved
    to loopback: the layout opens them to the pod network, which a test must not do to this machine's."""
    api, metrics = free_port(), free_port()
    settings = {k: v for k, v in layout_config.items() if k != "model_store"}  # LocalTorchServe sets the store
    for key in ("inference_address", "management_address"):
        address = urlparse(layout_config[key])
        settings[key] = f"{address.scheme}://{address.hostname}:{api}"
    settings.update(metrics_address=f"http://127.0.0.1:{metrics}",
                    grpc_inference_port=free_port(), grpc_management_port=free_port())  # the layout names 7070/7071
    ts = LocalTorchServe(layout / RUNTIME_STORE, models="", config=settings, env={"TS_SERVICE_ENVELOPE": ""})
    # LocalTorchServe's URLs name the ports it picked; the config above moved the servers elsewhere.
    ts.inference = ts.management = f"http://127.0.0.1:{api}"
    ts.metrics = f"http://127.0.0.1:{metrics}"
    ts.admin = TorchServeAdmin(ts.management)
    ts.ports = {"api": api, "metrics": metrics, "grpc_inference": settings["grpc_inference_port"],
                "grpc_management": settings["grpc_management_port"]}
    try:
        ts.start()
        deadline = time.monotonic() + 120
        while not ("sentiment" in ts.admin.models() and ts.admin.ready_workers("sentiment") > 0):
            assert time.monotonic() < deadline, "the model_snapshot did not load sentiment.mar:\n" + ts.log()[-3000:]
            time.sleep(0.5)
        yield ts
    finally:
        ts.stop()


def test_layout_config_loads_sentiment_mar(layout_server, layout_config):
    (description,) = layout_server.admin.describe()
    (version, entry), = snapshot_models(layout_config)["sentiment"].items()
    assert description["modelVersion"] == version
    assert description["modelUrl"] == "sentiment.mar"
    assert description["batchSize"] == entry["batchSize"] and description["maxBatchDelay"] == entry["maxBatchDelay"]


def test_layout_server_answers_v2_on_the_kserve_path(layout_server, signature):
    """/v2/models/<name>/infer is where KServe's model server forwards v2 calls; concurrent calls
    share TorchServe batches, and each keeps all its texts and its own id (no envelope in the way)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {i: pool.submit(requests.post, layout_server.inference + "/v2/models/sentiment/infer",
                                  json=v2_body(TEXTS[i % 4:] + TEXTS[: i % 4], f"req-{i}"), timeout=30) for i in range(8)}
    for i, future in futures.items():
        response = future.result()
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == f"req-{i}" and body["model_version"] == signature.version
        labels = next(o for o in body["outputs"] if o["name"] == "label")
        assert labels["shape"] == [4]
        expected = ["positive", "negative", "positive", "negative"]
        assert labels["data"] == expected[i % 4:] + expected[: i % 4]


def test_layout_server_listens_on_loopback_only(layout_server):
    """TorchServe binds what the layout says: the REST APIs on one loopback port (8085 in the pod),
    gRPC on loopback; nothing else listens (metrics were moved to loopback by the fixture)."""
    listening = [c.laddr for c in layout_server.frontend.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert {address.port for address in listening} == {int(port) for port in layout_server.ports.values()}, listening
    assert all(is_loopback(address.ip.removeprefix("::ffff:")) for address in listening), listening
    assert layout_server.admin.request("GET", "/models/sentiment", timeout=5).status_code == 200


# --- the v2 round trip on the shipped server ------------------------------------------------------

def test_v2_round_trip(server, signature):
    response = requests.post(server.inference + "/predictions/sentiment", json=v2_body(TEXTS, "review-batch-7"), timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "review-batch-7"
    assert body["model_name"] == "sentiment" and body["model_version"] == signature.version
    outputs = {o["name"]: o for o in body["outputs"]}
    assert [o["name"] for o in body["outputs"]] == ["probability", "label"]
    assert outputs["probability"]["datatype"] == "FP32" and outputs["label"]["datatype"] == "BYTES"
    assert outputs["probability"]["shape"] == outputs["label"]["shape"] == [len(TEXTS)]
    assert len(outputs["probability"]["data"]) == len(outputs["label"]["data"]) == len(TEXTS)

    plain = requests.post(server.inference + "/predictions/sentiment", json={"texts": TEXTS}, timeout=30).json()["predictions"]
    assert outputs["probability"]["data"] == pytest.approx([p["probability"] for p in plain], abs=1e-6)  # plain rounds to 6 places
    assert outputs["label"]["data"] == [p["label"] for p in plain] == ["positive", "negative", "positive", "negative"]


def test_v2_without_id_and_on_the_kserve_path(server):
    direct = requests.post(server.inference + "/predictions/sentiment", json=v2_body(TEXTS[:2]), timeout=30)
    kserve = requests.post(server.inference + "/v2/models/sentiment/infer", json=v2_body(TEXTS[:2]), timeout=30)
    assert direct.status_code == kserve.status_code == 200, (direct.text, kserve.text)
    assert "id" not in direct.json()
    assert kserve.json() == direct.json()


MALFORMED_V2 = {
    "no_text_input": ({"inputs": [{"name": "review", "datatype": "BYTES", "shape": [1], "data": ["great"]}]}, "missing_text"),
    "inputs_not_a_list": ({"inputs": {"name": "text", "data": ["great"]}}, "missing_text"),
    "two_text_inputs": ({"inputs": [{"name": "text", "data": ["a"]}, {"name": "text", "data": ["b"]}]}, "missing_text"),
    "data_not_a_list": ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": "great"}]}, "wrong_type"),
    "data_missing": ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]}, "wrong_type"),
    "number_in_data": ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["great", 7]}]}, "wrong_type"),
    "empty_data": ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [0], "data": []}]}, "too_many_texts"),
    "blank_text": ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["  "]}]}, "empty_text"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_V2))
def test_malformed_v2_body_is_a_400(server, case):
    body, kind = MALFORMED_V2[case]
    response = requests.post(server.inference + "/v2/models/sentiment/infer", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["kind"] == kind
