"""Every command in README.md and docs/*.md works as written and answers what they document.

- Every curl command in a ```bash block runs, file by file in the order of README's map of docs/
  (README first), on a TorchServe of this module's own (ports mapped), because some scale workers;
  its answer must have the documented fields, types and labels. Afterwards that server must be back
  to the shipped worker count. The commands of docs/versions-and-rollout.md run, in order, on a
  server started like `make serve MODEL_API=on`. Only the error examples, which leave a server as
  they found it, use the session `server`.
- Every other command line, in a block or an inline `make ...`, must name a make target and
  variables the Makefile has, a script and options it parses, or a file that exists; promtool's
  runs. A command no check knows fails, so a new kind of command needs a check here.
- The pages themselves: README short, with a map of every docs/ file; every docs page opens with its
  commands; links resolve; placeholders only as `<!-- TODO(issue N): ... -->` in docs/; the layout
  lists every file; the limits and error kinds are the code's.
"""

import json
import math
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import yaml

import quick_v2
from sentiment.ops.torchserve import ROOT, LocalTorchServe
from sentiment.serving.signature import Signature
from sentiment.ops.properties import max_request_bytes, max_response_bytes, read_properties

README_PATH = "README.md"
VERSIONS_DOC = "docs/versions-and-rollout.md"
README = (ROOT / README_PATH).read_text()
# README's map of docs/: "| [docs/api.md](docs/api.md) | ... |", in reading order.
MAPPED = re.findall(r"^\| \[(docs/[\w-]+\.md)\]\(\1\) \|", README, flags=re.M)
ON_DISK = sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
# Every page, README first, then the map's order; a page missing from the map still has its commands run (and fails the map test).
PAGES = [README_PATH] + MAPPED + [p for p in ON_DISK if p not in MAPPED]
TEXT = {page: (ROOT / page).read_text() for page in PAGES}
LANGUAGES = {"bash", "sh", "json", "jsonc", "yaml", "text"}  # ```bash holds commands; sh only README's explanation (test_explain.py)


def without_comments(markdown: str) -> str:
    return re.sub(r"<!--.*?-->", "", markdown, flags=re.S)


def blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", markdown, flags=re.S | re.M)


def prose(markdown: str) -> str:
    return re.sub(r"^```\w*\n.*?^```", "", without_comments(markdown), flags=re.S | re.M)


def section(markdown: str, heading: str) -> str:
    return markdown.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


def curls(markdown: str) -> list[str]:
    return [line for language, body in blocks(without_comments(markdown)) if language == "bash"
            for line in body.splitlines() if line.startswith("curl ")]


CURLS = [(page, command) for page in PAGES if page != VERSIONS_DOC for command in curls(TEXT[page])]
VERSION_CURLS = curls(TEXT[VERSIONS_DOC])


def json_example(containing: str) -> dict:
    """README's ```json block that contains `containing`."""
    (block,) = [b for language, b in blocks(README) if language == "json" and containing in b]
    return json.loads(block)


# What README documents for the answers.
PREDICTION_EXAMPLE = json_example('"label"')  # {"label": "positive", "probability": 0.997362, "model_version": "1"}
ERROR_EXAMPLE = json_example('"kind"')  # {"code": 400, "type": "BadRequest", "kind": "empty_text", "message": ...}
# For `texts`: `{"predictions": [{"label": ..., "probability": ...}, ...], "model_version": "1"}` (... elides values)
_texts_example = re.search(r"For `texts`: `(\{.*?\})`", README).group(1)
TEXTS_EXAMPLE = json.loads(_texts_example.replace(", ...]", "]").replace("...", "null"))
(_explanation_block,) = [b for language, b in blocks(README) if language == "jsonc"]
EXPLANATION_EXAMPLE = json.loads("\n".join(line for line in _explanation_block.splitlines() if not line.startswith("//")))
# "scale down to 1 worker, then back to the shipped 2"
SHIPPED_WORKERS = int(re.search(r"back to the shipped (\d+)", "\n".join(TEXT.values())).group(1))

# The label each review in the commands must get: adding a command with a new review means saying here what it is.
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
    """A curl command from the pages, read the way curl reads it."""

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

    @property
    def explains(self) -> bool:
        return self.path.startswith("/explanations/") or self.path.endswith(":explain") or self.path.endswith("/explain")

    @property
    def predicts(self) -> bool:
        return self.path.startswith("/predictions/") or self.path.endswith("/infer")

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
        # "probability is the calibrated P(positive); label is positive when probability is at least the threshold (0.5)"
        assert isinstance(prediction["probability"], float) and 0 <= prediction["probability"] <= 1, prediction
        assert prediction["label"] == ("positive" if prediction["probability"] >= signature.threshold else "negative")
    labels = [p["label"] for p in predictions]
    assert labels == expected, (texts, answer)
    return labels


def check_explanation(curl: Curl, answer, version: str, signature) -> list[str]:
    """An explanation command's answer: README's explanation fields for each text (a list, in order, for
    `texts`), "logit = base + the sum of the contributions", "probability is the prediction's own (the
    calibrated sigmoid of logit)", and `text[start:end]` inside the text sent; returns the labels."""
    form, texts = curl.texts()
    assert form in ("text", "texts"), f"no documented answer to check for a {form} explanation: {curl.command}"
    answers = answer if form == "texts" else [answer]
    assert isinstance(answers, list) and len(answers) == len(texts), answer
    for text, explained in zip(texts, answers):
        assert set(explained) == set(EXPLANATION_EXAMPLE), explained
        assert explained["model_version"] == version and explained["label"] == EXPECTED_LABELS[text], (text, explained)
        assert explained["label"] == signature.label(explained["probability"])
        # "the calibrated sigmoid of logit, the map reading how many words the model read (the tokens listed)"
        assert explained["probability"] == pytest.approx(signature.calibrate(1 / (1 + math.exp(-explained["logit"])), len(explained["tokens"])), abs=1e-5)
        assert explained["base"] + sum(t["contribution"] for t in explained["tokens"]) == pytest.approx(explained["logit"], abs=1e-4)
        assert explained["tokens"] and all(0 <= t["start"] < t["end"] <= len(text) for t in explained["tokens"]), explained
    return [explained["label"] for explained in answers]


def test_the_pages_hold_what_these_tests_read():
    readme_curls = [c for page, c in CURLS if page == README_PATH]
    assert len(readme_curls) >= 4 and len(CURLS) >= 10 and len(VERSION_CURLS) >= 7
    assert set(PREDICTION_EXAMPLE) == {"label", "probability", "model_version"}
    assert Curl.parse(CURLS[0][1]).texts()[0] == "text"  # "one review", whose answer the example shows
    assert set(TEXTS_EXAMPLE) == {"predictions", "model_version"} and set(TEXTS_EXAMPLE["predictions"][0]) == {"label", "probability"}
    assert set(ERROR_EXAMPLE) == {"code", "type", "kind", "message"}
    assert {"label", "probability", "model_version", "base", "logit", "tokens"} <= set(EXPLANATION_EXAMPLE)
    scale_commands = [c for c in (Curl.parse(c) for _, c in CURLS) if "min_worker" in c.query]
    assert [c.query["min_worker"] for c in scale_commands] == ["1", str(SHIPPED_WORKERS)]
    assert any(Curl.parse(c).path == "/metrics" for _, c in CURLS)
    explaining = [Curl.parse(c) for page, c in CURLS if page == "docs/explanations.md"]
    assert explaining and all(c.explains for c in explaining)  # the explanations page's commands ask for explanations


def test_shipped_worker_count_is_model_config(model_config):
    assert SHIPPED_WORKERS == model_config["minWorkers"] == model_config["maxWorkers"]


# --- the commands, in order, on a server of this module's own ----------------------------------------

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
def readme_run(readme_server) -> list[Outcome]:
    """Every command run once, in order; after a scale command, its worker count is awaited."""
    outcomes = []
    for _, command in CURLS:
        status, body = run_curl(readme_server, command)
        curl = Curl.parse(command)
        if "min_worker" in curl.query:
            try:
                readme_server.admin.wait_workers(int(curl.query["min_worker"]), timeout=60)
            except TimeoutError:
                pass  # recorded below, and the test of that command says so
        outcomes.append(Outcome(status, body, described(readme_server)["workers"]))
    return outcomes


@pytest.mark.parametrize("index", range(len(CURLS)), ids=[f"{page}:{n}" for n, (page, _) in enumerate(CURLS)])
def test_curl_answers_as_documented(readme_run, index, signature, model_config, parse_metrics):
    page, command = CURLS[index]
    outcome = readme_run[index]
    assert outcome.status == 200, (page, command, outcome.body)
    curl = Curl.parse(command)
    if curl.path == "/metrics":
        metrics = parse_metrics(outcome.body)  # prometheus_client's parser
        model = {"ModelName": signature.model_name, "ModelVersion": signature.version}
        # "including the model's own (predictions by label, expected correct, probability and length bins, errors by kind)"
        for family in ("SentimentPredictions", "SentimentExpectedCorrect", "SentimentProbabilityBin", "SentimentInputKiloCharsBin"):
            assert metrics.type(family) == "counter" and metrics.samples(family, **model), family
        assert all("le" in s.labels for s in metrics.samples("SentimentProbabilityBin", **model))
        # "A series appears on /metrics at its first increment (no errors yet: no SentimentRequestErrors)"
        assert not metrics.samples("SentimentRequestErrors")
        return
    answer = json.loads(outcome.body)
    if curl.explains:
        check_explanation(curl, answer, signature.version, signature)
    elif curl.predicts:
        check_prediction(curl, answer, signature.version, signature)
        if index == 0:  # "The answer, one line of compact JSON": README shows this command's real answer, probability included
            assert answer == PREDICTION_EXAMPLE
            assert outcome.body == json.dumps(PREDICTION_EXAMPLE, separators=(",", ":")), outcome.body
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
        pytest.fail(f"no documented answer to check for {command} ({page})")


def test_commands_leave_the_server_with_the_shipped_workers(readme_run, readme_server, model_config):
    description = described(readme_server)
    assert (description["minWorkers"], description["maxWorkers"]) == (model_config["minWorkers"], model_config["maxWorkers"])
    assert [w["status"] for w in description["workers"]] == ["READY"] * model_config["minWorkers"]
    scaled = [outcome for (_, c), outcome in zip(CURLS, readme_run) if "min_worker" in Curl.parse(c).query]
    assert [len(o.workers) for o in scaled] == [1, SHIPPED_WORKERS]  # and the commands did scale it


def test_metrics_count_the_commands_predictions(readme_run, readme_server, signature, await_metrics):
    """SentimentPredictions{Label} counts the predictions by label: on this server, exactly those of the
    commands (an explanation is a prediction too)."""
    labels = []
    for (_, command), outcome in zip(CURLS, readme_run):
        curl = Curl.parse(command)
        if curl.explains:
            labels += check_explanation(curl, json.loads(outcome.body), signature.version, signature)
        elif curl.predicts:
            labels += check_prediction(curl, json.loads(outcome.body), signature.version, signature)
    expected = {label: labels.count(label) for label in signature.labels}
    assert all(expected.values())
    model = {"ModelName": signature.model_name, "ModelVersion": signature.version}
    counted = await_metrics(readme_server, lambda s: {label: s.value("SentimentPredictions", **model, Label=label)
                                                      for label in signature.labels}, expected)
    assert counted == expected


# --- the error examples (they change nothing, so the session server) --------------------------------

def test_error_example_is_what_the_server_answers(server):
    """README's error body is the exact answer to the request it describes (an empty text)."""
    response = requests.post(server.inference + "/predictions/sentiment", json={"text": "   "}, timeout=30)
    assert response.status_code == ERROR_EXAMPLE["code"] == 400
    assert response.json() == ERROR_EXAMPLE


def test_curl_without_content_type_sends_a_form(server):
    """"`curl -d` without `-H` sends a form": README's first JSON command without its -H is refused so."""
    command = next(c for _, c in CURLS if "-H 'Content-Type: application/json'" in c and "-d '{\"text\"" in c)
    status, body = run_curl(server, command.replace(" -H 'Content-Type: application/json'", ""))
    answer = json.loads(body)
    assert status == 400 and set(answer) == set(ERROR_EXAMPLE), body
    assert (answer["code"], answer["type"], answer["kind"]) == (400, "BadRequest", "unsupported_content_type")


# --- the model-version flow ---------------------------------------------------------------------------

def test_model_version_flow_works_in_order(signature):
    """docs/versions-and-rollout.md's calls, in order, on a server started like `make serve MODEL_API=on`,
    with the quickly fine-tuned v2 of the tests standing in for `make archive VERSION=2`'s (same pipeline)."""
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


# --- every other command: it names what exists ----------------------------------------------------------

MAKEFILE = (ROOT / "Makefile").read_text()
MAKE_TARGETS = set(re.findall(r"^([a-z][\w-]*):(?!=)", MAKEFILE, flags=re.M))
MAKE_VARIABLES = set(re.findall(r"\$\((\w+)\)", MAKEFILE)) | set(re.findall(r"^(\w+)\s*[:?]?=", MAKEFILE, flags=re.M))


def commands(page: str) -> list[str]:
    """The command lines of a page: each line of its ```bash and ```sh blocks (comments dropped), and
    each inline `make ...` or `.venv/bin/python ...` of its prose (`a && b` is two)."""
    found = []
    for language, body in blocks(without_comments(TEXT[page])):
        if language in ("bash", "sh"):
            found += [line.strip() for line in body.splitlines() if line.strip() and not line.strip().startswith("#")]
    for span in re.findall(r"`([^`]+)`", prose(TEXT[page])):
        span = " ".join(span.split())
        if span.startswith(("make ", ".venv/bin/python ")):
            found += [part.strip() for part in span.split("&&")]
    return found


COMMANDS = [(page, command) for page in PAGES for command in commands(page)]


def script_options(script: str) -> set[str]:
    return set(re.findall(r"""["'](--[\w-]+)["']""", (ROOT / script).read_text()))


def check_make(words: list[str]) -> None:
    targets = [w for w in words[1:] if "=" not in w]
    assignments = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    assert targets, words
    assert set(targets) <= MAKE_TARGETS, f"no such make target: {set(targets) - MAKE_TARGETS}"
    assert set(assignments) <= MAKE_VARIABLES, f"the Makefile reads no such variable: {set(assignments) - MAKE_VARIABLES}"
    if "TRAIN_ARGS" in assignments:  # the trainer the Makefile picks: sentiment/training/nbsvm.py for v1, sentiment/training/transformer.py otherwise
        trainer = "sentiment/training/nbsvm.py" if assignments.get("VERSION", "1") == "1" else "sentiment/training/transformer.py"
        options = {w.split("=")[0] for w in shlex.split(assignments["TRAIN_ARGS"]) if w.startswith("--")}
        assert options <= script_options(trainer), f"{trainer} has no option {options - script_options(trainer)}"


def check_python(words: list[str]) -> None:
    """`python script.py ...` or `python -m package.module ...`: the file exists and takes the options given."""
    if words[1] == "-m":
        words = [words[0], words[2].replace(".", "/") + ".py", *words[3:]]
    script = words[1]
    assert (ROOT / script).is_file(), f"no such script: {script}"
    options = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
    assert options <= script_options(script), f"{script} has no option {options - script_options(script)}"


def check_kubectl(words: list[str]) -> None:
    assert words[:3] == ["kubectl", "apply", "-f"] and len(words) == 4, words
    manifests = list(yaml.safe_load_all((ROOT / words[3]).read_text()))
    assert manifests and all(m.get("apiVersion") and m.get("kind") for m in manifests), words[3]


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{page}:{n}" for n, (page, _) in enumerate(COMMANDS)])
def test_command_names_what_exists(page, command):
    if command.startswith("curl "):
        assert command in [c for _, c in CURLS] + VERSION_CURLS or page == README_PATH, \
            f"{page}: a curl outside a ```bash block is run by no test: {command}"
        return
    words = shlex.split(command, comments=True)
    if words[0] == "make":
        check_make(words)
    elif words[0] == ".venv/bin/python":
        check_python(words)
    elif words[0] == "kubectl":
        check_kubectl(words)
    elif words[0] == "promtool":
        if not shutil.which("promtool"):
            pytest.skip("promtool is not installed (`make test` installs it)")
        result = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
    else:
        pytest.fail(f"{page}: no check for the command {command!r}: add one to tests/test_readme.py")


def test_every_code_block_is_of_a_known_kind():
    """Commands live in ```bash blocks, which these tests run or check; the one ```sh block is README's
    explanation example, which tests/test_explain.py runs against a server with both versions."""
    for page in PAGES:
        for language, _ in blocks(TEXT[page]):
            assert language in LANGUAGES, f"{page}: a ```{language} block: commands go in ```bash, examples in json/yaml/text"
            assert language != "sh" or page == README_PATH, f"{page}: ```sh is read only in README's Explanations"
    explanations = section(README, "## Explanations")
    sh = [body for language, body in blocks(explanations) if language == "sh"]
    assert len(sh) == 1 and sh[0].startswith("curl ") and Curl.parse(sh[0].strip()).explains
    assert [language for language, _ in blocks(README) if language == "sh"] == ["sh"]
    assert len([1 for language, _ in blocks(explanations) if language == "jsonc"]) == 1


# --- the pages ------------------------------------------------------------------------------------------

def test_readme_is_short_and_maps_every_docs_page():
    assert len(README.splitlines()) <= 150
    assert MAPPED and sorted(MAPPED) == ON_DISK, "README's map must list every docs/*.md file, once"
    assert len(set(MAPPED)) == len(MAPPED)


def test_every_docs_page_opens_with_its_commands():
    for page in ON_DISK:
        headings = re.findall(r"^(#+) (.*)$", prose(TEXT[page]), flags=re.M)
        assert headings[0][0] == "#" and headings[1] == ("##", "Commands"), (page, headings[:2])
        assert [language for language, _ in blocks(section(TEXT[page], "## Commands"))][:1] == ["bash"], page


def test_placeholders_are_marked_and_only_in_docs():
    assert "TODO" not in README and "<!--" not in README
    for page in ON_DISK:
        outside = re.sub(r"<!-- TODO\(issue \d+\): [^<>]+? -->", "", TEXT[page])
        assert "TODO" not in outside and "<!--" not in outside, f"{page}: a placeholder must read <!-- TODO(issue N): ... -->"


def test_links_resolve():
    for page in PAGES:
        base = (ROOT / page).parent
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(TEXT[page])):
            if re.match(r"\w+://", target) or target.startswith("#"):
                continue
            assert (base / target.split("#")[0]).exists(), f"{page}: broken link {target}"


def tracked(*patterns: str) -> list[str]:
    return subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


def test_layout_lists_every_file_and_only_files_that_exist():
    (listing,) = [body for language, body in blocks(TEXT["docs/layout.md"]) if language == "text"]
    listed = [line.split()[0] for line in listing.splitlines() if line.strip()]
    for path in listed:
        assert (ROOT / path).exists(), f"docs/layout.md lists {path}, which does not exist"
    words = set(re.findall(r"[\w./-]+", listing))
    top_level = [f for f in tracked() if "/" not in f and f not in ("README.md", ".gitignore")]
    scripts = [f for f in tracked("scripts/*.py") if not f.endswith("__init__.py")]
    scripts += [f for f in tracked("sentiment/*.py") if not f.endswith("/__init__.py") or f == "sentiment/__init__.py"]
    folders = ["bench/", "deploy/prometheus/", "deploy/kserve/", "model_store/", "docs/", "tests/"]
    missing = [f for f in top_level + scripts + folders if f not in words]
    assert not missing, f"docs/layout.md does not list {missing}"


# --- what the pages say of the code -------------------------------------------------------------------

def table_row(page: str, label: str) -> list[str]:
    (line,) = [line for line in TEXT[page].splitlines() if line.startswith(f"| {label} |")]
    return [cell.strip(" *") for cell in line.strip("|").split("|")[1:]]


def test_limits_table_is_the_code():
    from sentiment.serving.signature import LIMITS

    default = {name: f.default for name, f in Signature.__dataclass_fields__.items()}
    v1_texts, v2_texts = LIMITS["nbsvm"]["max_texts"], LIMITS["transformer"]["max_texts"]
    explain_texts = [LIMITS[arch]["max_explain_texts"] for arch in ("nbsvm", "transformer")]
    properties = read_properties(ROOT / "config.properties")
    request, response = int(properties["max_request_size"]), int(properties["max_response_size"])
    assert request == max_request_bytes(v1_texts, default["max_chars"]) and response == max_response_bytes(explain_texts[0], default["max_explain_chars"])
    configs = [yaml.safe_load((ROOT / name).read_text()) for name in ("model-config.yaml", "model-config-v2.yaml")]
    page = "docs/api.md"
    assert table_row(page, "characters per text (`max_chars`)")[:2] == [f"{default['max_chars']:,}"] * 2
    assert table_row(page, "texts per request (`max_texts`)")[:2] == [str(v1_texts), str(v2_texts)]
    assert table_row(page, "texts per explanation request (`max_explain_texts`)")[:2] == [str(n) for n in explain_texts]
    assert table_row(page, "characters of the words read per explanation request, all texts together (`max_explain_chars`)")[:2] == \
        [f"{default['max_explain_chars']:,}"] * 2
    assert table_row(page, "request body, bytes (`max_request_size`)")[:2] == [f"{request:,}"] * 2
    assert table_row(page, "answer, bytes (`max_response_size`)")[:2] == [f"{response:,}"] * 2
    assert table_row(page, "response timeout, s (`responseTimeout`)")[:2] == [str(c["responseTimeout"]) for c in configs]
    assert table_row(page, "requests per batch (`batchSize`), batch delay")[:2] == \
        [f"{c['batchSize']}, {c['maxBatchDelay']} ms" for c in configs]
    # README's words for the same limits
    assert f"v1: up to {v1_texts}, v2: up to {v2_texts}" in README
    assert f"over {default['max_chars']:,}" in README and f"over {request:,} bytes" in README


def test_error_kinds_are_the_code():
    """Every kind the handler can answer is documented, in README's list and docs/api.md's table, and
    every kind documented is one the code answers."""
    code = (ROOT / "sentiment/serving/payload.py").read_text() + (ROOT / "sentiment/serving/handler.py").read_text()
    kinds = set(re.findall(r"(?:BadRequest|Unavailable|RequestError)\(\s*\"(\w+)\"", code))
    assert {"empty_text", "lone_surrogate", "batch_budget", "inference_error"} <= kinds
    readme = set(re.findall(r"`([a-z0-9]+(?:_[a-z0-9]+)+)`", section(README, "## Errors")))
    table = {m for m in re.findall(r"^\| (?:400|500|503) \| `(\w+)` \|", TEXT["docs/api.md"], flags=re.M)}
    assert readme == kinds, (readme ^ kinds)
    assert table == kinds, (table ^ kinds)
