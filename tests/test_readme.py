"""Every curl command in README.md's code blocks works as written (ports mapped to a test server)."""

import json
import re
import subprocess

import pytest

from local_server import ROOT

README = (ROOT / "README.md").read_text()
CODE_BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
CURLS = [line for block in CODE_BLOCKS for line in block.splitlines() if line.startswith("curl ")]


def test_readme_has_curl_examples():
    assert len(CURLS) >= 7


@pytest.mark.parametrize("command", CURLS)
def test_readme_curl_works(server, command):
    for default, actual in (("8080", server.inference), ("8081", server.management), ("8082", server.metrics)):
        command = command.replace(f"http://127.0.0.1:{default}", actual)
    result = subprocess.run(["bash", "-c", command + " -w '\\n%{http_code}'"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    assert status == "200", (command, result.stdout)
    if "/metrics" in command:
        assert "# TYPE" in body
    else:
        assert isinstance(json.loads(body), (dict, list))
