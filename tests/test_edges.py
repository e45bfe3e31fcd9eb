"""Requests at the edges of the limits (issues 18 and 24), through a real TorchServe serving v1 and the
quick v2 side by side: no request, however odd, kills a worker or fails the requests batched with it,
and every answer is 200, or a 4xx/503 JSON body naming its kind (or 413, empty, past max_request_size).

The property-based test sends Hypothesis-generated requests to both versions' /predictions and
/explanations: any body and content type, Unicode (surrogates, non-BMP, combining marks, entities,
special-token strings, characters that expand under NFKC), odd JSON (1e999, NaN, 5,000-digit integers,
deep nesting, duplicate keys), BOMs and other encodings, sizes at and past every limit of each
version's signature and max_request_size, explanations of the costliest texts. Each request goes to
both versions, together with good requests, while a blocker keeps the version's one worker busy, so
that the next batch holds them all: the worker's "batch of N requests" line proves they shared it.

`make test` runs a quick fixed set (derandomized, no database) and replays every failure the fuzzer
saved (tests/edge_regressions.json). `make fuzz` (FUZZ_EXAMPLES, FUZZ_SEED) generates thousands with a
printed random seed, keeps Hypothesis's database in build/hypothesis, and saves the smallest request
of each distinct failure to tests/edge_regressions.json. The worst admissible request and batch of
each version are sent on their own.
"""

import asyncio
import base64
import json
import os
import re
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

import quick_v2
from bench.loadgen import JSON, PLAIN_TEXT, Outcome, Request
from sentiment.ops.torchserve import ROOT, LocalTorchServe
from sentiment.serving.core import predict_proba
from sentiment.serving.runtime import load_core
from sentiment.serving.signature import Signature, load_encoder
from sentiment.ops.properties import max_response_bytes, read_properties
from sentiment.serving.cost import costliest_texts, largest_explanation_text

MAX_RESPONSE_SIZE = int(read_properties(ROOT / "config.properties")["max_response_size"])
VERSIONS = ("1", "2")
GOOD = ["A gorgeous, moving film with a wonderful cast.", "A dull, lifeless mess.", "the acting is fine but the plot drags"]
# How far a served probability may be from the text's score alone: v1 float32 rounding; v2's batched passes pad
# differently from one text alone, and its int8 core scales activations per pass (Signature.batch_tolerance)
TOLERANCE = {"1": 1e-6, "2": 1e-4}


@pytest.fixture(scope="module")
def store():
    return quick_v2.build()


@pytest.fixture(scope="module")
def ts(store):
    with LocalTorchServe(store, models="sentiment.mar,sentiment_v2.mar") as server:
        server.admin.wait_workers(2, version="1")
        server.admin.wait_workers(2, version="2")
        yield server


@pytest.fixture(scope="module")
def served(store, tmp_path_factory) -> dict:
    """Per version: the archive's signature and model config, and the core + featuriser to score good requests locally."""
    out = {}
    for version, mar in (("1", "sentiment.mar"), ("2", "sentiment_v2.mar")):
        folder = tmp_path_factory.mktemp(f"v{version}")
        with zipfile.ZipFile(store / mar) as archive:
            archive.extractall(folder)
        signature = Signature.load(folder)
        manifest = json.loads((folder / "MAR-INF" / "MANIFEST.json").read_text())["model"]
        out[version] = {"signature": signature, "config": yaml.safe_load((folder / manifest["configFile"]).read_text()),
                        "core": load_core(folder, signature), "encoder": load_encoder(folder, signature)}
    return out


def worker_pids(ts) -> set[int]:
    return {proc.pid for proc in ts.workers()}


def post(ts, requests_: list[Request], timeout: float = 120) -> list[Outcome]:
    async def run():
        from bench.loadgen import client_session, send
        async with client_session(64, timeout) as session:
            return await asyncio.gather(*(send(session, ts.inference, r) for r in requests_))
    return asyncio.run(run())


def path(version: str, explain: bool = False) -> str:
    return f"/{'explanations' if explain else 'predictions'}/sentiment/{version}"


def good_requests() -> list[Request]:
    return [Request(path(v), json.dumps({"text": text}).encode(), JSON, "text") for v in VERSIONS for text in GOOD]


def check_good(outcomes: list[Outcome], served) -> None:
    """Each good request answered 200 with its version's own score of its text."""
    for request, outcome in zip(good_requests(), outcomes):
        version = request.path.rsplit("/", 1)[1]
        assert outcome.status == 200, (request.path, outcome.status, outcome.body[:300])
        answer = outcome.json()
        text = json.loads(request.body)["text"]
        raw = predict_proba(served[version]["core"], [text], served[version]["encoder"]).item()
        expected = served[version]["signature"].calibrate(raw, served[version]["encoder"].lengths([text])[0])
        # its batch-mates are the odd requests; batch_tolerance is measured on export's probe texts: twice it
        tolerance = max(TOLERANCE[version], 2 * served[version]["signature"].batch_tolerance)
        assert answer["model_version"] == version and abs(answer["probability"] - expected) <= tolerance, (answer, expected)


def check_answer(outcome: Outcome) -> None:
    """200, or an error the client can act on: a JSON body with the kind. Never a 500, never a dropped connection."""
    assert outcome.status is not None, outcome.error
    if outcome.status == 200:
        assert outcome.json() is not None, outcome.body[:300]
        return
    body = outcome.json()
    assert outcome.status in (400, 503) and isinstance(body, dict) and body.get("kind"), (outcome.status, outcome.body[:300])


# --- what the fuzzer draws from ----------------------------------------------------------------------

# `make fuzz` sets these; without them the test is make test's quick fixed run.
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "0"))
FUZZ_MIN_REQUESTS = 2_000  # generated requests each version must have answered for a fuzz run to count
FUZZ_DATABASE = ROOT / "build" / "hypothesis"
FUZZ_SUMMARY = ROOT / "build" / "fuzz-summary.json"
REGRESSIONS = Path(__file__).with_name("edge_regressions.json")  # the smallest request of each failure found
MAX_REQUEST_SIZE = int(read_properties(ROOT / "config.properties")["max_request_size"])
BLOCKER_TEXTS = {"1": 20, "2": 5}  # costliest texts keeping a version's worker busy (~0.5 s) while the example queues
SEND_ATTEMPTS = 3  # on a loaded machine the blocker can end before the example has all arrived: then it is sent again
TEXT_LIMITS = ("max_chars",)  # what a Sized text is measured against
LIST_LIMITS = ("max_texts", "max_explain_texts")  # and a SizedList


@dataclass(frozen=True)
class Sized:
    """A text `limit + delta` characters long (the limit read from the version's signature), of `unit` repeated."""
    unit: str
    limit: str
    delta: int

    def build(self, signature: Signature) -> str:
        n = max(0, getattr(signature, self.limit) + self.delta)
        return (self.unit * (n // len(self.unit) + 1))[:n]


@dataclass(frozen=True)
class SizedList:
    """`limit + delta` copies of `item` (a text or a Sized), the limit read from the version's signature."""
    item: object
    limit: str
    delta: int

    def build(self, signature: Signature) -> list:
        n = max(0, getattr(signature, self.limit) + self.delta)
        return [materialize(self.item, signature)] * n


@dataclass(frozen=True)
class Costliest:
    """`n` of the costliest admissible texts (sentiment/serving/cost.py) of the version."""
    n: int

    def build(self, signature: Signature) -> list:
        return costliest_texts(signature, self.n)


@dataclass(frozen=True)
class KServeV2:
    """A KServe v2 request of `data`, its shape the length of `data` once built for the version."""
    id: str
    data: object

    def build(self, signature: Signature) -> dict:
        data = materialize(self.data, signature)
        return {"id": self.id, "inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(data)], "data": data}]}


def materialize(value, signature: Signature):
    """A generated JSON value with its Sized / SizedList / Costliest / KServeV2 parts built for one version."""
    if isinstance(value, (Sized, SizedList, Costliest, KServeV2)):
        return value.build(signature)
    if isinstance(value, list):
        return [materialize(v, signature) for v in value]
    if isinstance(value, dict):
        return {k: materialize(v, signature) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Body:
    """How a generated body is written: JSON of `value`, or `value` itself (bytes; a str as text), in `encoding`
    with or without its BOM; `pad_to`: spaces appended up to max_request_size + pad_to bytes."""
    value: object
    as_json: bool = True
    encoding: str = "utf-8"
    bom: bool = False
    pad_to: int | None = None

    def build(self, signature: Signature) -> bytes:
        value = materialize(self.value, signature)
        if isinstance(value, bytes):
            raw = value
        else:
            text = json.dumps(value, ensure_ascii=False) if self.as_json else str(value)
            raw = text.encode(self.encoding, "surrogatepass" if self.encoding.startswith("utf") else "replace")
            if self.bom:
                raw = {"utf-8": b"\xef\xbb\xbf", "utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff",
                       "utf-32-le": b"\xff\xfe\x00\x00"}.get(self.encoding, b"") + raw
        if self.pad_to is not None:
            raw += b" " * max(0, MAX_REQUEST_SIZE + self.pad_to - len(raw))
        return raw


@dataclass(frozen=True)
class Odd:
    """One generated request, sent to both versions."""
    body: Body
    content_type: str | None
    explain: bool

    def request(self, version: str, signature: Signature) -> Request:
        return Request(path(version, self.explain), self.body.build(signature), self.content_type, None)


EDGY = ["[SEP]", "[PAD]", "[CLS]", "[MASK]", "[UNK]", "&#xFDFA;", "&amp;", "&#0;", "&#xD800;", "\ufdfa", "\ud800", "\udfff",
        "\U0001F600", "e\u0301", "\u0301", "<br />", "<i>", "\x01", "\x00", "\u0085", "\u2028", " ", "İ", "ß", "ﬁ", "!",
        "great film", "awful", "\ufeff", "\u200b"]
# Characters NFKC writes as several: "…" -> "...", "ﷺ" -> 18 characters, the squared units U+3380-33DF ("㎀" -> "pA").
NFKC_EXPANDING = ["\u2026", "\ufdfa", "\ufb03", "\u2474", "\u33ff"] + [chr(c) for c in range(0x3380, 0x33E0, 7)]
fragments = st.one_of(st.sampled_from(EDGY), st.sampled_from(NFKC_EXPANDING), st.text(max_size=12),
                      st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF).map(str))
short_texts = st.lists(fragments, max_size=8).map("".join)
units = st.sampled_from(EDGY + NFKC_EXPANDING + ["a", "word ", "\u2026 "])
# Around every length limit of the version's signature; NFKC-expanding units reach the normalised length's.
long_texts = st.builds(Sized, units, st.sampled_from(TEXT_LIMITS), st.sampled_from([-1, 0, 1, 2_000]))
texts = st.one_of(short_texts, short_texts, long_texts)
text_lists = st.one_of(
    st.lists(short_texts, min_size=0, max_size=3),
    st.builds(SizedList, st.sampled_from(["fine", "\u2026"]), st.sampled_from(LIST_LIMITS), st.sampled_from([-1, 0, 1])),
    st.lists(long_texts, min_size=2, max_size=5),
    st.builds(SizedList, long_texts, st.just("max_texts"), st.sampled_from([-1, 0])),  # all at once: max_explain_chars too
    st.builds(Costliest, st.sampled_from([1, 2, 3, 4, 5, 16])),  # explanations of the costliest texts
)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | short_texts,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_texts, inner, max_size=3), max_leaves=8)
request_values = st.one_of(
    st.builds(lambda t: {"text": t}, texts),
    st.builds(lambda t: {"texts": t}, text_lists),
    st.builds(KServeV2, short_texts, text_lists),
    json_values,
)
# JSON Python reads into odd numbers (or refuses to read: int digits past 4,300), deep nesting and duplicate keys,
# written by hand where json.dumps cannot.
NUMBERS = ["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1e-999", "-0", "0.1e400", "9" * 5_000, "-" + "1" * 4_301,
           "1" * 4_300, "123456789012345678901234567890", "1E+9999999999"]
odd_numbers = st.builds(str.format, st.sampled_from(['{{"text": {0}}}', '{{"texts": ["fine", {0}]}}', '{{"text": "fine", "n": {0}}}',
                                                     '{{"id": {0}, "inputs": [{{"name": "text", "datatype": "BYTES", "shape": [{0}], "data": ["fine"]}}]}}',
                                                     '[{0}]', '{0}']), st.sampled_from(NUMBERS))
nested = st.builds(lambda depth, form: form.format("[" * depth + "]" * depth),
                   st.sampled_from([50, 999, 1_000, 10_000, 100_000]), st.sampled_from(["{}", '{{"text": {}}}', '{{"texts": {}}}']))
duplicates = st.builds(lambda a, b, key: f'{{"{key}": {json.dumps(a)}, "{key}": {json.dumps(b)}}}',
                       st.one_of(short_texts, st.just(["fine"])), st.one_of(short_texts, st.integers(), st.just(["fine"])),
                       st.sampled_from(["text", "texts", "id"])) | st.just('{"text": "fine", "texts": ["fine"]}')
ENCODINGS = ["utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "latin-1"]
nfkc_texts = st.builds(Sized, st.sampled_from(NFKC_EXPANDING + ["\u2026 "]), st.sampled_from(TEXT_LIMITS), st.sampled_from([-1, 0, 1]))
# Each kind of trouble the issues named, drawn equally often (Hypothesis's one_of favours its first branches).
KINDS = [
    st.builds(Body, request_values),  # every request form, any JSON
    st.builds(Body, st.one_of(st.builds(lambda t: {"text": t}, nfkc_texts),  # NFKC-expanding texts at the limits
                              st.builds(lambda t: {"texts": t}, st.lists(nfkc_texts, min_size=1, max_size=5)))),
    st.builds(Body, odd_numbers.map(str.encode), st.just(False)),  # 1e999, NaN, 5,000-digit integers
    st.builds(Body, nested.map(str.encode), st.just(False)),  # deep nesting
    st.builds(Body, duplicates.map(str.encode), st.just(False)),  # duplicate keys
    st.builds(Body, request_values, st.just(True), st.sampled_from(ENCODINGS), st.booleans()),  # BOMs, other encodings
    st.builds(Body, st.one_of(st.builds(lambda t: {"text": t}, long_texts), st.builds(lambda t: {"texts": t}, text_lists),
                              st.builds(KServeV2, short_texts, text_lists))),  # sizes at and past each limit
    st.builds(Body, st.builds(lambda t: {"texts": t}, st.builds(Costliest, st.sampled_from([1, 2, 3, 4, 5, 16])))),  # the costliest texts
    st.builds(Body, texts, st.just(False), st.sampled_from(ENCODINGS), st.booleans()),  # raw text bodies
    st.builds(Body, st.binary(max_size=64), st.just(False)),
]
small_bodies = st.sampled_from(range(len(KINDS))).flatmap(lambda kind: KINDS[kind])
at_request_size = st.builds(Body, st.just({"text": "fine"}), pad_to=st.sampled_from([-1, 0, 1]))  # at and past max_request_size
bodies = st.sampled_from([False] * 39 + [True]).flatmap(lambda padded: at_request_size if padded else small_bodies)  # 1 in 40: 7.7 MB each

content_types = st.sampled_from([JSON, PLAIN_TEXT, "text/plain; charset=utf-8", "application/json; charset=UTF-8",
                                 "text/plain; charset=utf-16", "application/json; charset=latin-1",
                                 "application/octet-stream", "application/x-www-form-urlencoded", "text/html", None])
odd_requests = st.builds(Odd, bodies, st.one_of(st.just(JSON), content_types), st.booleans())


def saved_regressions() -> list[list[Odd]]:
    """The examples the fuzzer saved (each as the raw requests it sent one version), to replay."""
    saved = json.loads(REGRESSIONS.read_text()) if REGRESSIONS.exists() else []
    return [[Odd(Body(base64.b64decode(r["body_base64"]), as_json=False), r["content_type"], r["explain"]) for r in entry["requests"]]
            for entry in saved]


def save_regression(requests_: list[Request], odd: list[Odd], failure: str) -> None:
    """Keep the smallest example seen per distinct failure (Hypothesis shrinks towards it) in REGRESSIONS:
    its requests as sent to the version of the first one that failed (v1 when the failure names none)."""
    key = re.sub(r"\d+", "N", failure)[:200]
    version = next((v for v in VERSIONS if f"/sentiment/{v}" in failure), VERSIONS[0])
    sent = [r for r in requests_ if r.path.endswith("/" + version)]
    saved = json.loads(REGRESSIONS.read_text()) if REGRESSIONS.exists() else []
    same = [s for s in saved if s["failure_key"] == key]
    size = sum(len(r.body) for r in sent)
    if same and sum(len(base64.b64decode(r["body_base64"])) for r in same[0]["requests"]) <= size:
        return
    entry = {"failure_key": key, "failure": failure[:1000], "seed": FUZZ_SEED, "version": version,
             "requests": [{"content_type": o.content_type, "explain": o.explain, "body_base64": base64.b64encode(r.body).decode()}
                          for o, r in zip(odd, sent)]}
    REGRESSIONS.write_text(json.dumps([s for s in saved if s["failure_key"] != key] + [entry], indent=1) + "\n")


BATCH_LINE = re.compile(r"W-\d+-sentiment_(\w+)-stdout MODEL_LOG - batch of (\d+) requests")
STATS = Counter()  # requests sent per version, examples, failures, batches proven shared


def batches(ts, since: int) -> dict[str, list[int]]:
    """Per version, the sizes of the batches its worker logged after offset `since` of model_log.log."""
    found: dict[str, list[int]] = {v: [] for v in VERSIONS}
    for version, size in BATCH_LINE.findall(ts.log("model_log.log")[since:]):
        found.setdefault(version, []).append(int(size))
    return found


def blocker(version: str, signature: Signature) -> Request:
    """New words each time: the worker caches the features of words it has seen, and a blocker it knew would be quick."""
    STATS["blockers"] += 1
    texts = costliest_texts(signature, BLOCKER_TEXTS[version], seed=STATS["blockers"])
    return Request(path(version), json.dumps({"texts": texts}).encode(), JSON, "texts")


def send_example(ts, odd: list[Odd], served) -> tuple[list[Request], list[Outcome], dict[str, list[int]], dict[str, int]]:
    """Each version's blocker, then (while it runs) every odd request to both versions and the good requests.
    Returns the odd requests, all outcomes, the sizes of the batches each version's worker took, and the
    requests each version's handler should have seen (all but those TorchServe refused for their size)."""
    requests_ = [o.request(v, served[v]["signature"]) for v in VERSIONS for o in odd]
    since = len(ts.log("model_log.log"))

    async def run():
        from bench.loadgen import client_session, send
        async with client_session(64, 120) as session:
            blockers = [asyncio.create_task(send(session, ts.inference, blocker(v, served[v]["signature"]))) for v in VERSIONS]
            await asyncio.sleep(0.1)
            outcomes = await asyncio.gather(*(send(session, ts.inference, r) for r in requests_ + good_requests()))
            await asyncio.gather(*blockers)
            return outcomes
    outcomes = asyncio.run(run())
    expected = {v: 1 + len(GOOD) + sum(r.path.endswith("/" + v) and len(r.body) <= MAX_REQUEST_SIZE for r in requests_) for v in VERSIONS}
    deadline = time.monotonic() + 10  # the frontend writes the workers' lines asynchronously
    while sum(map(sum, batches(ts, since).values())) < sum(expected.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return requests_, outcomes, batches(ts, since), expected


def check_odd(request: Request, outcome: Outcome) -> None:
    """200, or an error the client can act on: a JSON body with the kind, or TorchServe's 413 (empty) for a body
    past max_request_size. Never a 500, never a dropped connection."""
    if len(request.body) > MAX_REQUEST_SIZE:
        assert outcome.status == 413 or (outcome.status is None and "Disconnect" in (outcome.error or "")), (outcome.status, outcome.error)
        return
    check_answer(outcome)


@pytest.fixture
def one_worker_each(ts):
    """One worker a version for the property test, so that a busy worker makes the next batch hold the whole example."""
    for version in VERSIONS:
        ts.admin.scale(1, version=version)
    yield ts
    for version in VERSIONS:
        ts.admin.scale(2, version=version)


PROPERTY_SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
if FUZZ_EXAMPLES:
    edge_settings = settings(max_examples=FUZZ_EXAMPLES, derandomize=False, database=DirectoryBasedExampleDatabase(FUZZ_DATABASE), **PROPERTY_SETTINGS)
    fuzz_seed = seed(FUZZ_SEED)
else:
    edge_settings = settings(max_examples=15, derandomize=True, database=None, **PROPERTY_SETTINGS)
    fuzz_seed = lambda test: test  # noqa: E731


def with_saved_regressions(test):
    for odd in saved_regressions():
        test = example(odd)(test)
    return test


def regression(body, content_type=JSON, explain=False) -> Odd:
    return Odd(Body(body if isinstance(body, bytes) else json.dumps(body).encode(), as_json=False), content_type, explain)


@edge_settings
@fuzz_seed
# At most 4 a version: with its 3 good requests, 7 fit v2's batch and queue (8) behind the blocker.
@given(st.lists(odd_requests, min_size=3 if FUZZ_EXAMPLES else 1, max_size=4))
@with_saved_regressions
# Found before the fixes of issue 18, kept as regression cases:
@example([regression({"text": "\ud800"})])  # v2's tokenizer raised: 500 inference_error
@example([regression({"text": "!" * 10_000}, explain=True)])  # a 1.2 MB answer: the worker was closed, batch-mates failed
@example([regression({"text": "&#xFDFA;" * 1_250})])  # 10,000 characters that read as 22,500
@example([regression({"texts": ["x [SEP] y [PAD]"]}, explain=True)])
@example([regression({"id": "\udc00", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]})])
def test_odd_requests_never_fail_a_worker_or_their_batch_mates(one_worker_each, served, odd):
    ts = one_worker_each
    pids = worker_pids(ts)
    try:
        for attempt in range(SEND_ATTEMPTS):
            requests_, outcomes, sizes, expected = send_example(ts, odd, served)
            for request, outcome in zip(requests_, outcomes):
                check_odd(request, outcome)
            check_good(outcomes[len(requests_):], served)
            assert worker_pids(ts) == pids, "a worker was restarted"
            # the blocker's batch, then one holding the rest: the odd requests shared the good ones'
            if all(sizes[version] == [1, expected[version] - 1] for version in VERSIONS):
                break
            STATS["resent"] += 1
        else:
            raise AssertionError(f"/sentiment/: never one shared batch in {SEND_ATTEMPTS} attempts: sizes {sizes}, expected {expected}")
    except AssertionError as error:
        STATS["failures"] += 1
        if FUZZ_EXAMPLES:
            save_regression(requests_, odd, str(error))
        raise
    STATS["examples"] += 1
    STATS["batches_shared"] += len(VERSIONS)
    for request in requests_:
        STATS["requests_v" + request.path.rsplit("/", 1)[1]] += 1


@pytest.mark.skipif(not FUZZ_EXAMPLES, reason="make fuzz only")
def test_fuzz_run_sent_enough_requests_per_version():
    """Written after the property test: its numbers (build/fuzz-summary.json, docs/reliability.md)."""
    summary = {"seed": FUZZ_SEED, "max_examples": FUZZ_EXAMPLES, **STATS}
    FUZZ_SUMMARY.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nfuzz summary: {summary}")
    assert all(STATS["requests_v" + v] >= FUZZ_MIN_REQUESTS for v in VERSIONS), summary


# --- the worst admissible answer, request and batch --------------------------------------------------

def test_max_response_size_fits_the_largest_answer_the_signatures_allow(served):
    for version in VERSIONS:
        signature = served[version]["signature"]
        assert MAX_RESPONSE_SIZE >= max_response_bytes(signature.max_explain_texts, signature.max_explain_chars), version
    assert MAX_RESPONSE_SIZE == max_response_bytes(served["1"]["signature"].max_texts, served["1"]["signature"].max_explain_chars)


@pytest.mark.parametrize("version", VERSIONS)
def test_largest_explanation_answer_is_served(ts, served, version):
    """A text of one-character words that each need a 6-byte escape, up to the explanation character
    budget: the answer fits max_response_size and the worker lives (v1 answered 1.2 MB to "!" x 10,000)."""
    signature = served[version]["signature"]
    text = largest_explanation_text(signature)
    n = min(signature.max_explain_texts, signature.max_explain_chars // len(text))
    pids = worker_pids(ts)
    [outcome] = post(ts, [Request(path(version, explain=True), json.dumps({"texts": [text] * n}).encode(), JSON, None)])
    assert outcome.status == 200, outcome.body[:300]
    assert len(outcome.body) <= MAX_RESPONSE_SIZE and len(outcome.json()) == n
    assert worker_pids(ts) == pids


def test_explanation_request_past_its_character_budget_is_refused_before_any_work(ts, served):
    signature = served["1"]["signature"]
    texts = ["great film " * 900] * (signature.max_explain_chars // 9_900 + 1)
    [outcome] = post(ts, [Request(path("1", explain=True), json.dumps({"texts": texts}).encode(), JSON, None)])
    assert outcome.status == 400 and outcome.json()["kind"] == "explanation_too_long", outcome.body[:300]


@pytest.mark.parametrize("version", VERSIONS)
def test_worst_admissible_batch_is_answered_within_the_timeout(ts, served, version):
    """batchSize requests of max_texts costliest texts queued while both workers are busy, so that one
    worker takes them as one batch (v1: 32 x 64 x 10,000 characters, ~30 s of work against a 10 s
    timeout before the fix): each is answered 200, or 503 batch_budget once the batch's estimated cost
    is spent. No batch outran responseTimeout: that would restart the worker and answer its requests
    500 "Worker died". (A client waits longer than the timeout on a loaded machine: tens of MB of
    bodies go through the frontend, and a request may wait for the batch before its own.)"""
    signature, config = served[version]["signature"], served[version]["config"]
    texts = costliest_texts(signature, signature.max_texts)
    body = json.dumps({"texts": texts}, ensure_ascii=False).encode()
    worst = Request(path(version), body, JSON, "texts")
    pids = worker_pids(ts)

    async def blockers_then_batch() -> list[Outcome]:
        from bench.loadgen import client_session, send
        async with client_session(64, 3 * config["responseTimeout"]) as session:
            blockers = []
            for _ in range(2):  # one per worker: apart, so that the frontend cannot batch the two together (maxBatchDelay 1 ms)
                blockers.append(asyncio.create_task(send(session, ts.inference, worst)))
                await asyncio.sleep(0.2)
            return await asyncio.gather(*blockers, *(send(session, ts.inference, worst) for _ in range(config["batchSize"])))

    outcomes = asyncio.run(blockers_then_batch())
    kinds = [o.kind("texts") for o in outcomes]
    assert set(kinds) <= {"ok", "503:batch_budget"} and kinds[:2] == ["ok", "ok"], kinds
    assert worker_pids(ts) == pids
    if version == "1":  # 30 such requests are ~30 s of work: had they not formed one batch, none would be refused
        assert "503:batch_budget" in kinds and re.search(r"admitted \d+ of (\d{2}) requests", ts.log("model_log.log")), re.findall(r"admitted.*|batch of.*", ts.log("model_log.log"))[-12:]
    print(f"\nv{version} worst batch: {kinds.count('ok')} answered, {kinds.count('503:batch_budget')} refused (503)")


# --- unit checks of the fixes -------------------------------------------------------------------------

def test_literal_special_token_strings_are_read_as_text(served):
    encoder = served["2"]["encoder"]
    [ids] = encoder.token_ids(["a [SEP] b [PAD] [CLS] [MASK]"])
    specials = {encoder.tokenizer.token_to_id(t) for t in ("[SEP]", "[PAD]", "[CLS]", "[MASK]")}
    assert ids[0] == encoder.cls and ids[-1] == encoder.sep and not specials & set(ids[1:-1]), encoder.tokenizer.decode(ids)
