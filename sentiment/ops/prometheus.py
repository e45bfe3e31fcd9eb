"""The one Prometheus client of the project: instant queries against its HTTP API, with errors that say
what to do (drift_report and promote read the served metrics through it)."""

import shutil
from urllib.parse import urlparse

import requests

DEFAULT_PROMETHEUS = "http://127.0.0.1:9090"


class NoReport(Exception):
    """The report cannot be made; the message says why and what to do."""


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict]:
    """An instant query; the result vector as [{"metric": {...}, "value": [t, "v"]}]."""
    params = {"query": expr, **({"time": at} if at is not None else {})}
    try:
        response = requests.get(prometheus.rstrip("/") + "/api/v1/query", params=params, timeout=10)
    except requests.ConnectionError as error:
        raise NoReport(unreachable(prometheus, error)) from None
    except requests.RequestException as error:
        raise NoReport(f"Prometheus at {prometheus} did not answer: {error}") from None
    try:
        body = response.json()
    except ValueError:
        raise NoReport(f"{prometheus} answered HTTP {response.status_code} without JSON: is it Prometheus?") from None
    if not isinstance(body, dict) or "status" not in body:
        raise NoReport(f"{prometheus} answered HTTP {response.status_code} with JSON that is not Prometheus' API: is it Prometheus?")
    if body.get("status") != "success":
        raise NoReport(f"Prometheus refused the query {expr!r}: {body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]


def unreachable(prometheus: str, error: Exception) -> str:
    local = urlparse(prometheus).hostname in ("127.0.0.1", "localhost", "::1")
    if local and shutil.which("prometheus") is None:
        return (f"Prometheus is not installed, and nothing answers at {prometheus}. `make monitor` installs "
                "Debian's prometheus package and starts it on 127.0.0.1:9090.")
    return (f"Prometheus is not reachable at {prometheus} ({type(error).__name__}). "
            + ("Start it with `make monitor` (after `make serve`)." if local else "Check the URL and that it runs."))
