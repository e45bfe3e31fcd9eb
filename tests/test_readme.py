"""Every curl command in README.md's code blocks works as written and answers what README documents
for it: the fields, types and labels of its example answers, the worker counts its scale commands
name, the metrics it says are there.

The commands run, in README order, on a TorchServe of this module's own (ports mapped), because
they scale workers; afterwards that server must be back to the shipped worker count. Only the error
examples, which leave a server as they found it, use the session `server`.
"""

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

import pytest
import requests

import quick_v2
from local_server import ROOT, LocalTorchServe

README = (ROOT / "README.md").read_text()
VERSIONS_HEADING = "## Model versions"


def curls(markdown: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]


_before, _, _rest = README.partition(VERSIONS_HEADING)
VERSION_SECTION, _, _after = _rest.partition("\n## ")
CURLS = curls(_before + _after)
VERSION_CURLS = curls(VERSION_SECTION)


def json_example(containing: str) -> dict:
    """The README's ```json block that contains `containing`."""
    (block,) = [b for b in re.findall(r"```json\n(.*?)```", README, flags=re.S) if containing in b]
    return json.loads(block)


# What README documents for the answers.
PREDICTION_EXAMPLE = json_example('"label"')  # {"label": "positive", "probability": 0.997362, "model_version": "1"}
ERROR_EXAMPLE = json_example('"kind"')  # {"code": 400, "type": "BadRequest", "kind": "empty_text", "message": ...}
# For `texts`: `{"predictions": [{"label": ..., "probability": ...}, ...], "model_version": "1"}` (... elides values)
_texts_example = re.search(r"For `texts`: `(\{.*?\})`", README).group(1)
TEXTS_EXAMPLE = json.loads(_texts_example.replace(", ...]", "]").replace("...", "null"))
SHIPPED_WORKERS = int(re.search(r"back to the shipped (\d+)", README).group(1))  # "scale down to 1 worker, then back to the shipped 2"

# The label each review in README's commands must get: adding a command with a new review means saying here what it is.
EXPECTED_LABELS = {
    "A gorgeous, moving film with a wonderful cast.": "positive",
    "A dull, lifeless mess.": "negative",
    "One of the best films of the year.": "positive",
    "The worst film of the year, a tedious waste of time.": "negative",
    "Loved every minute.": "positive",
    "A tedious waste of time.": "negative",
    "Worth seeing twice.": "positive",
}


@dataclass
class Curl:
    """A README curl command, read the way curl reads it."""

    command: str
    method: str
    url: str
    headers: dict
    data: str | None

    @classmethod
    def parse(cls, command: str) -> "Curl":
        words = shlex.split(command)
        method, url, headers, data = None, None, {}, None
        for option, value in zip(words, words[1:] + [""]):
            if option == "-X":
                method = value
            elif option == "-H":
                name, _, header = value.partition(":")
                headers[name.strip().lower()] = header.strip()
            elif option in ("-d", "--data-binary"):
                data = value
        url = next(w for w in words if w.startswith("http"))
        return cls(command, method or ("POST" if data is not None else "GET"), url, headers, data)

    @property
    def path(self) -> str:
        return urlparse(self.url).path

    @property
    def query(self) -> dict:
        return {k: v[0] for k, v in parse_qs(urlparse(self.url).query).items()}

    def texts(self) -> tuple[str, list[str]]:
        """The request form ("text", "texts", "v2") and its reviews."""
        if self.headers.get("content-type", "").startswith("text/plain"):
            return "text", [self.data]
        body = json.loads(self.data)
        if "inputs" in body:
            return "v2", body["inputs"][0]["data"]
        return ("text", [body["text"]]) if "text" in body else ("texts", body["texts"])


def run_curl(server, command: str) -> tuple[int, str]:
    """Run the command as written, ports mapped to `server`; return the HTTP status and the body."""
    for default, actual in (("8080", server.inference), ("8081", server.management), ("8082", server.metrics)):
        command = command.replace(f"http://127.0.0.1:{default}", actual)
    result = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (command, result.stderr)
    body, _, status = result.stdout.rpartition("\n")
    return int(status), body


def check_prediction(curl: Curl, answer, version: str, signature) -> list[str]:
    """The answer to a prediction command has README's shape for its form and the expected labels; returns the labels."""
    form, texts = curl.texts()
    expected = [EXPECTED_LABELS[t] for t in texts]
    if form == "text":
        assert set(answer) == set(PREDICTION_EXAMPLE), answer
        for key, example in PREDICTION_EXAMPLE.items():
            assert type(answer[key]) is type(example), (key, answer)
        predictions = [answer]
    elif form == "texts":
        assert set(answer) == set(TEXTS_EXAMPLE), answer
        predictions = answer["predictions"]
        assert isinstance(predictions, list) and len(predictions) == len(texts), answer
        for prediction in predictions:
            assert set(prediction) == set(TEXTS_EXAMPLE["predictions"][0]), prediction
            assert isinstance(prediction["label"], str) and isinstance(prediction["probability"], float), prediction
    else:  # KServe v2, "answered in the same protocol": the request's id, the model, one output per result
        request = json.loads(curl.data)
        assert set(answer) == {"id", "model_name", "model_version", "outputs"}, answer
        assert answer["id"] == request["id"] and answer["model_name"] == signature.model_name
        outputs = {o["name"]: o for o in answer["outputs"]}
        assert len(outputs) == len(answer["outputs"]) == 2 and set(outputs) == {"probability", "label"}, answer
        assert (outputs["probability"]["datatype"], outputs["label"]["datatype"]) == ("FP32", "BYTES")
        for output in outputs.values():
            assert output["shape"] == request["inputs"][0]["shape"] == [len(output["data"])] == [len(texts)], output
        predictions = [{"label": label, "probability": p} for label, p in zip(outputs["label"]["data"], outputs["probability"]["data"])]
    assert answer["model_version"] == version, answer
    for prediction in predictions:
        # "probability is P(positive) = sigmoid(logit); label is positive when it is at least the threshold (0.5)"
        assert isinstance(prediction["probability"], float) and 0 <= prediction["probability"] <= 1, prediction
        assert prediction["label"] == ("positive" if prediction["probability"] >= signature.threshold else "negative")
    labels = [p["label"] for p in predictions]
    assert labels == expected, (texts, answer)
    return labels


def test_readme_documents_what_these_tests_read():
    assert len(CURLS) >= 8 and len(VERSION_CURLS) >= 7
    assert set(PREDICTION_EXAMPLE) == {"label", "probability", "model_version"}
    assert Curl.parse(CURLS[0]).texts()[0] == "text"  # "one review", whose answer the example shows
    assert set(TEXTS_EXAMPLE) == {"predictions", "model_version"} and set(TEXTS_EXAMPLE["predictions"][0]) == {"label", "probability"}
    assert set(ERROR_EXAMPLE) == {"code", "type", "kind", "message"}
    scale_commands = [c for c in map(Curl.parse, CURLS) if "min_worker" in c.query]
    assert [c.query["min_worker"] for c in scale_commands] == ["1", str(SHIPPED_WORKERS)]


def test_readme_shipped_worker_count_is_model_config(model_config):
    assert SHIPPED_WORKERS == model_config["minWorkers"] == model_config["maxWorkers"]


# --- the README's commands, in order, on a server of this module's own ------------------------------

@pytest.fixture(scope="module")
def readme_server(export_dir, tmp_path_factory):
    store = tmp_path_factory.mktemp("readme_model_store")
    shutil.copy(ROOT / "model_store" / "sentiment.mar", store)  # a concurrent `make archive` cannot change it under us
    with LocalTorchServe(store) as ts:
        yield ts


@dataclass
class Outcome:
    status: int
    body: str
    workers: list  # the model's workers right after the command


def described(server) -> dict:
    (description,) = server.admin.describe()
    return description


@pytest.fixture(scope="module")
def readme_run(readme_server) -> dict[str, Outcome]:
    """Every README command run once, in README order; after a scale command, its worker count is awaited."""
    outcomes = {}
    for command in CURLS:
        status, body = run_curl(readme_server, command)
        curl = Curl.parse(command)
        if "min_worker" in curl.query:
            try:
                readme_server.admin.wait_workers(int(curl.query["min_worker"]), timeout=60)
            except TimeoutError:
                pass  # recorded below, and the test of that command says so
        outcomes[command] = Outcome(status, body, described(readme_server)["workers"])
    return outcomes


@pytest.mark.parametrize("command", CURLS)
def test_readme_curl_answers_as_documented(readme_run, command, signature, model_config, parse_metrics):
    outcome = readme_run[command]
    assert outcome.status == 200, (command, outcome.body)
    curl = Curl.parse(command)
    if curl.path == "/metrics":
        metrics = parse_metrics(outcome.body)  # prometheus_client's parser
        model = {"ModelName": signature.model_name, "ModelVersion": signature.version}
        # "including the model's own (predictions by label, probability histogram, errors by kind)"
        assert metrics.type("SentimentPredictions") == "counter" and metrics.samples("SentimentPredictions", **model)
        assert metrics.type("SentimentProbability") == "histogram" and metrics.samples("SentimentProbability", "_count", **model)
        assert metrics.type("SentimentInputKiloChars") == "histogram"
        # "A series appears on /metrics at its first increment (no errors yet: no SentimentRequestErrors)"
        assert not metrics.samples("SentimentRequestErrors")
        return
    answer = json.loads(outcome.body)
    if curl.path.startswith("/predictions/") or curl.path.endswith("/infer"):
        check_prediction(curl, answer, signature.version, signature)
        if command == CURLS[0]:  # "A prediction": README shows this command's real answer, probability included
            assert answer == PREDICTION_EXAMPLE
    elif "min_worker" in curl.query:  # scale: the model has exactly that many workers, all READY
        wanted = int(curl.query["min_worker"])
        assert set(answer) == {"status"} and str(wanted) in answer["status"], answer
        assert [w["status"] for w in outcome.workers] == ["READY"] * wanted, outcome.workers
    elif curl.method == "GET" and curl.path == "/models/sentiment":  # "describe the model: version, batch size, workers and their status"
        (description,) = answer
        assert description["modelName"] == signature.model_name and description["modelVersion"] == signature.version
        assert description["batchSize"] == model_config["batchSize"]
        assert [w["status"] for w in description["workers"]] == ["READY"] * SHIPPED_WORKERS  # described after the scale back
    else:
        pytest.fail(f"no documented answer to check for {command}")


def test_readme_commands_leave_the_server_with_the_shipped_workers(readme_run, readme_server, model_config):
    description = described(readme_server)
    assert (description["minWorkers"], description["maxWorkers"]) == (model_config["minWorkers"], model_config["maxWorkers"])
    assert [w["status"] for w in description["workers"]] == ["READY"] * model_config["minWorkers"]
    scaled = [readme_run[c] for c in CURLS if "min_worker" in Curl.parse(c).query]
    assert [len(o.workers) for o in scaled] == [1, SHIPPED_WORKERS]  # and the commands did scale it


def test_readme_metrics_count_the_readme_predictions(readme_run, readme_server, signature, await_metrics):
    """README: SentimentPredictions{Label} counts the predictions by label: on this server, exactly those of README's commands."""
    labels = []
    for command in CURLS:
        curl = Curl.parse(command)
        if curl.path.startswith("/predictions/") or curl.path.endswith("/infer"):
            labels += check_prediction(curl, json.loads(readme_run[command].body), signature.version, signature)
    expected = {label: labels.count(label) for label in signature.labels}
    assert all(expected.values())
    model = {"ModelName": signature.model_name, "ModelVersion": signature.version}
    counted = await_metrics(readme_server, lambda s: {label: s.value("SentimentPredictions", **model, Label=label)
                                                      for label in signature.labels}, expected)
    assert counted == expected


# --- the error examples (they change nothing, so the session server) --------------------------------

def test_readme_error_example_is_what_the_server_answers(server):
    """README's error body is the exact answer to the request it describes (an empty text)."""
    response = requests.post(server.inference + "/predictions/sentiment", json={"text": "   "}, timeout=30)
    assert response.status_code == ERROR_EXAMPLE["code"] == 400
    assert response.json() == ERROR_EXAMPLE


def test_readme_curl_without_content_type_sends_a_form(server):
    """"note that `curl -d` without `-H` sends a form": README's first JSON command without its -H is refused so."""
    command = next(c for c in CURLS if "-H 'Content-Type: application/json'" in c and "-d '{\"text\"" in c)
    status, body = run_curl(server, command.replace(" -H 'Content-Type: application/json'", ""))
    answer = json.loads(body)
    assert status == 400 and set(answer) == set(ERROR_EXAMPLE), body
    assert (answer["code"], answer["type"], answer["kind"]) == (400, "BadRequest", "unsupported_content_type")


# --- the model-version flow ---------------------------------------------------------------------------

def test_readme_model_version_flow_works_in_order(signature):
    """The versions section's calls, in order, on a server started like `make serve MODEL_API=on`, with
    the quickly fine-tuned v2 of the tests standing in for `make archive VERSION=2`'s (same pipeline)."""
    outcomes = []
    with LocalTorchServe(quick_v2.build(), config={"enable_model_api": "true"}) as server:
        for command in VERSION_CURLS:
            outcomes.append(run_curl(server, command))
    for command, (status, body) in zip(VERSION_CURLS, outcomes):
        assert status == 200, (command, body)
        curl = Curl.parse(command)
        answer = json.loads(body)
        version = re.fullmatch(r"/predictions/sentiment/(\d+)", curl.path)
        if version:
            check_prediction(curl, answer, version.group(1), signature)
        elif curl.path == "/models/sentiment/all":
            assert sorted(d["modelVersion"] for d in answer) == ["1", "2"], answer
    versioned = [re.fullmatch(r"/predictions/sentiment/(\d+)", Curl.parse(c).path) for c in VERSION_CURLS]
    assert sorted(v.group(1) for v in versioned if v) == ["1", "2"]
