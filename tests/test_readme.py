"""Every curl command in README.md's code blocks works as written (ports mapped to a test server)."""

import json
import re
import subprocess

import pytest

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


def run_curl(server, command: str) -> str:
    """Run the command as written, ports mapped to `server`; return the body of a 200 answer."""
    for default, actual in (("8080", server.inference), ("8081", server.management), ("8082", server.metrics)):
        command = command.replace(f"http://127.0.0.1:{default}", actual)
    result = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    assert status == "200", (command, result.stdout)
    return body


def test_readme_has_curl_examples():
    assert len(CURLS) >= 8 and len(VERSION_CURLS) >= 7


@pytest.mark.parametrize("command", CURLS)
def test_readme_curl_works(server, command):
    body = run_curl(server, command)
    if "/metrics" in command:
        assert "# TYPE" in body
    else:
        assert isinstance(json.loads(body), (dict, list))


def test_readme_model_version_flow_works_in_order():
    """The versions section's calls, in order, on a server started like `make serve MODEL_API=on`."""
    subprocess.run(["make", "-s", "archive", "VERSION=2"], cwd=ROOT, check=True)
    with LocalTorchServe(ROOT / "model_store", config={"enable_model_api": "true"}) as server:
        answers = [json.loads(run_curl(server, command)) for command in VERSION_CURLS]
    by_command = dict(zip(VERSION_CURLS, answers))
    assert next(a for c, a in by_command.items() if "/predictions/sentiment/2" in c)["model_version"] == "2"
    assert next(a for c, a in by_command.items() if "/predictions/sentiment/1" in c)["model_version"] == "1"
