"""The benchmark's own parts, without TorchServe: the load generator (against a tiny aiohttp
server) and its percentile, the provenance of results files, the request bodies, and the peers
(FastAPI, LitServe) answering as the handler does and leaving no process behind."""

import asyncio
import json
import socket
import subprocess
import sys
import threading

import psutil
import pytest
from aiohttp import web

from sentiment.ops.torchserve import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import corpus  # noqa: E402  (bench/corpus.py)
import loadgen  # noqa: E402  (bench/loadgen.py)
import model  # noqa: E402  (bench/model.py)
import provenance  # noqa: E402  (bench/provenance.py)


def test_percentile_is_the_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert loadgen.percentile(values, 50) == 50
    assert loadgen.percentile(values, 99) == 99
    assert loadgen.percentile(values, 100) == 100
    assert loadgen.percentile(values, 0) == 1
    assert loadgen.percentile([7.0], 99) == 7.0
    assert loadgen.percentile([], 50) is None
    assert loadgen.percentile([1, 2, 3, 4], 50) == 2 and loadgen.percentile([1, 2, 3, 4], 51) == 3


@pytest.fixture(scope="module")
def toy_server():
    """An aiohttp server on a free port: /good answers a prediction, /wrong a 200 with the wrong shape."""
    async def good(request):
        await request.read()
        return web.json_response({"label": "positive", "probability": 0.9, "model_version": "1"})

    async def wrong(request):
        return web.json_response({"status": "fine"})

    async def ping(request):
        return web.json_response({"status": "Healthy"})

    app = web.Application()
    app.add_routes([web.post("/good", good), web.post("/wrong", wrong), web.get("/ping", ping)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def run_loadgen(url: str, tmp_path, *extra: str) -> tuple[list[str], dict]:
    bodies = tmp_path / "bodies.json"
    bodies.write_text(json.dumps([json.dumps({"text": f"review {i}"}) for i in range(5)]))
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "loadgen.py"), "--url", url, "--concurrency", "4",
                          "--warmup", "0.2", "--duration", "0.6", *extra, *(["--bodies", str(bodies)] if "/ping" not in url else [])],
                         capture_output=True, text=True, timeout=60, check=True)
    lines = run.stdout.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_loadgen_measures_a_window_and_checks_every_answer(toy_server, tmp_path):
    lines, good = run_loadgen(toy_server + "/good", tmp_path)
    assert lines[0] == "MEASURING"
    assert good["requests"] > 0 and good["errors"] == 0 and good["throughput_rps"] > 0
    assert good["latency_ms"]["p50"] <= good["latency_ms"]["p99"] <= good["latency_ms"]["max"]
    _, wrong = run_loadgen(toy_server + "/wrong", tmp_path)
    assert wrong["requests"] == 0 and wrong["bad_body"] > 0 and wrong["errors"] == wrong["bad_body"]
    _, ping = run_loadgen(toy_server + "/ping", tmp_path)
    assert ping["requests"] > 0 and ping["errors"] == 0
    _, bounded = run_loadgen(toy_server + "/good", tmp_path, "--max-requests", "10")
    assert bounded["issued_total"] == 10 and bounded["hit_max_requests"]


# ---------------------------------------------------------------- provenance of results files

@pytest.fixture
def repo(tmp_path):
    """A git repository with one committed file and a bench/results/ folder."""
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "results.json").write_text("{}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return tmp_path


def test_results_from_a_clean_tree_go_to_bench_results_with_the_commit(repo):
    (repo / "bench" / "results" / "results.json").write_text('{"new": 1}\n')  # results themselves do not count
    (repo / "bench" / "results" / "new.png").write_bytes(b"png")
    run = provenance.Provenance(root=repo, results=repo / "bench" / "results")
    assert run.target(repo / "bench" / "results" / "results.json") == (repo / "bench" / "results" / "results.json").resolve()
    record = run.record()
    assert record["git_clean"] is True and len(record["git_commit"]) == 40 and record["changed_files"] == []


def test_a_dirty_tree_is_refused_unless_allowed_and_then_goes_to_tmp(repo):
    (repo / "code.py").write_text("x = 2\n")
    (repo / "untracked.py").write_text("")
    with pytest.raises(SystemExit, match="--allow-dirty") as refused:
        provenance.Provenance(root=repo, results=repo / "bench" / "results")
    assert "code.py" in str(refused.value) and "untracked.py" in str(refused.value)
    run = provenance.Provenance(allow_dirty=True, root=repo, results=repo / "bench" / "results")
    results = repo / "bench" / "results"
    assert run.target(results / "soak.json") == (results / "tmp" / "soak.json").resolve()
    assert run.target(repo / "elsewhere.json") == (repo / "elsewhere.json").resolve()  # not README-bound: as given
    record = run.record()
    assert record["git_clean"] is False and record["changed_files"] == [" M code.py", "?? untracked.py"]


def test_a_tree_that_changes_during_the_run_sends_results_to_tmp(repo):
    run = provenance.Provenance(root=repo, results=repo / "bench" / "results")
    (repo / "code.py").write_text("x = 3\n")
    assert run.target(repo / "bench" / "results" / "results.json") == (repo / "bench" / "results" / "tmp" / "results.json").resolve()
    assert run.record()["git_clean"] is False


# ---------------------------------------------------------------- request bodies


def test_bodies_come_from_the_one_loader_whole():
    """train.load_dataset's snippets, none cut at U+0085 (str.splitlines() made 31 of them two)."""
    pools = corpus.by_label()
    assert len(pools[0]) == len(pools[1]) == 5331
    snippets = pools[0] + pools[1]
    assert not any("\x85" in t for t in snippets) and sum("\u2026" in t for t in snippets) == 31
    texts, described = corpus.mix(max_chars=10_000, n=500)
    assert len(texts) == described["count"] == 500
    singles = [t for t in texts if t in set(snippets)]
    assert 0.6 < len(singles) / len(texts) < 0.95 and described["chars"]["max"] <= 10_000


def test_short_and_long_bodies():
    short, described = corpus.short()
    assert len(short) == described["count"] > 100 and all(len(t.split()) == corpus.SHORT_WORDS for t in short)
    long, described = corpus.long(n=50)
    assert len(long) == 50 and all(900 < len(t) <= corpus.LONG_CHARS for t in long) and len(set(long)) == 50


# ---------------------------------------------------------------- the peers


def test_the_peers_score_with_the_handlers_settings(export_dir):
    from sentiment.serving import handler

    assert model.TORCH_THREADS == handler.TORCH_THREADS
    shipped = model.shipped_config(model.archive("1"))
    assert shipped["batchSize"] >= 1 and model.torch_threads(shipped) >= 1
    predictor = model.Predictor(model.artifact("1"))
    requests_ = [predictor.parse(b'{"text": "A gorgeous, moving film."}', "application/json"),
                 predictor.parse(b'{"texts": ["A dull mess.", "Loved it."]}', "application/json")]
    one, many = predictor.answer(requests_)
    assert one["label"] == "positive" and [p["label"] for p in many["predictions"]] == ["negative", "positive"]
    text = ["A gorgeous, moving film."]
    assert one["probability"] == round(predictor.signature.calibrate(predictor.score(text)[0], predictor.score.lengths(text)[0]), 6)


def test_peer_servers_answer_and_leave_no_process(export_dir, tmp_path):
    import requests
    import servers  # bench/servers.py

    body = json.dumps({"text": "A gorgeous, moving film with a wonderful cast."})
    predictor = model.Predictor(model.artifact("1"))
    (expected,) = predictor.answer([predictor.parse(body.encode(), "application/json")])
    for start in (lambda: servers.fastapi(model.artifact("1"), 2, 1, tmp_path),
                  lambda: servers.litserve(model.artifact("1"), 1, 1, 8, 0.002, tmp_path)):
        with start() as server:
            pids = [p.pid for p in server.processes()]
            answer = requests.post(server.url + "/predictions/sentiment", data=body, headers={"Content-Type": "application/json"}, timeout=30)
            assert answer.status_code == 200 and answer.json() == expected, (server.name, answer.text)
            bad = requests.post(server.url + "/predictions/sentiment", data='{"text": " "}', headers={"Content-Type": "application/json"}, timeout=30)
            assert bad.status_code == 400 and "empty_text" in bad.text
        assert len(pids) > 1 and not [pid for pid in pids if psutil.pid_exists(pid)], server.name


def shipped_capacity(version: str) -> float:
    """The measured capacity the version's queue is derived from: v1's open-loop ramp in `make overload`
    (bench/results/overload.json, the traffic its targets are judged on), v2's shipped configuration at 32
    clients on the mix in `make bench VERSION=2` (bench/results/results_v2.json; overload.py runs v1 only)."""
    if version == "1":
        return json.loads((ROOT / "bench/results/overload.json").read_text())["servers"]["torchserve"]["capacity_rps"]
    results = json.loads((ROOT / "bench/results/results_v2.json").read_text())
    return results["choice"]["capacity_rps_at_32"][results["choice"]["recommended_case"]]


@pytest.mark.parametrize("version, config", [("1", "model-config.yaml"), ("2", "model-config-v2.yaml")])
def test_the_queue_is_the_wait_a_client_accepts_at_measured_capacity(version, config):
    import yaml

    from common import job_queue_size

    shipped = yaml.safe_load((ROOT / config).read_text())["jobQueueSize"]
    assert shipped == job_queue_size(shipped_capacity(version)), (version, shipped_capacity(version))
