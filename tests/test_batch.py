"""sentiment/ops/batch_predict.py: bad rows reported and marked, atomic output, format round trips, parity with training,
and --endpoint scoring with the served version's signature and limits."""

import dataclasses
import json
import math

import pandas as pd
import pytest
import requests
import torch

from sentiment.ops import batch_predict
import quick_v2
from sentiment.ops.batch_predict import Endpoint, run, score_frame
from sentiment.serving.payload import Parsed, answer_chars, response_body
from sentiment.serving.signature import Signature
from sentiment.data import load_dataset
from sentiment.serving.core import predict_proba

GOOD = ["a gorgeous, moving film with a wonderful cast", "dull and far too long", "the best thing i have seen this year"]


def score_texts(export_dir, texts, tmp_path, batch_size=batch_predict.BATCH_SIZE) -> pd.DataFrame:
    source, target = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    run(source, target, artifact=export_dir, batch_size=batch_size)
    return pd.read_parquet(target)


def test_probabilities_equal_training_predict_proba(export_dir, encoder, signature, tmp_path):
    """Offline scores are training's predict_proba, calibrated, rounded and labelled as the endpoint answers."""
    texts = load_dataset()[0][:700]
    out = score_texts(export_dir, texts, tmp_path, batch_size=128)  # several batches
    core = torch.jit.load(str(export_dir / signature.model_file))
    expected = [signature.calibrate(p, n) for p, n in zip(predict_proba(core, texts, encoder).tolist(), encoder.lengths(texts))]
    assert out["probability"].tolist() == [round(p, 6) for p in expected]
    assert out["label"].tolist() == [signature.label(round(p, 6)) for p in expected]
    assert out["error"].isna().all()


def test_a_text_at_the_threshold_gets_the_endpoints_label_offline(signature):
    """Regression: batch scoring labelled the unrounded probability, the endpoint the rounded one, so
    0.4999996 was "negative" offline and "positive" (0.5) online. Both go through payload.labelled now
    (here without the calibration, so that the scores are the probabilities answered)."""
    signature = dataclasses.replace(signature, calibration=None)
    near = [signature.threshold - 4e-7, signature.threshold - 6e-7]
    frame = pd.DataFrame({"text": ["a", "b"]})
    out = score_frame(frame, lambda texts: near, "text", signature)
    online = response_body(Parsed(texts=["a", "b"], form="texts").answer(near, signature), signature)["predictions"]
    assert out["label"].tolist() == [p["label"] for p in online] == ["positive", "negative"]
    assert out["probability"].tolist() == [p["probability"] for p in online]


def test_bad_csv_rows_are_reported_with_line_numbers_and_marked(export_dir, signature, tmp_path, caplog):
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_text(
        "id,text\n"
        f'1,"{GOOD[0]}"\n'            # line 2 (quoted: a comma inside)
        "2,\n"                        # line 3: empty
        '3,"two\nlines"\n'            # lines 4-5: a quoted newline is one good row
        "4,too,many\n"                # line 6: three fields
        "\n"                          # line 7: blank, no row
        f"5,{'x' * (signature.max_chars + 1)}\n"  # line 8: too long
        "6,   \n"                     # line 9: whitespace only
        f"7,{GOOD[1]}\n"              # line 10
    )
    summary = run(source, target, artifact=export_dir)
    out = pd.read_csv(target, dtype={"error": str})

    assert summary["rows"] == len(out) == 7
    assert (summary["scored"], summary["skipped_bad_rows"]) == (3, 4)
    assert out["id"].tolist() == [1, 2, 3, 4, 5, 6, 7]  # nothing dropped, input order kept
    bad = out[out["error"].notna()]
    assert bad["id"].tolist() == [2, 4, 5, 6]
    assert bad["probability"].isna().all() and bad["label"].isna().all()
    assert bad["error"].tolist() == [
        "line 3: empty_text: text is empty or whitespace only",
        "line 6: bad_csv_row: 3 fields, the header has 2",
        f"line 8: text_too_long: text has {signature.max_chars + 1} characters, the limit is {signature.max_chars}",
        "line 9: empty_text: text is empty or whitespace only",
    ]
    good = out[out["error"].isna()]
    assert good["probability"].between(0, 1).all() and good["label"].isin(signature.labels).all()
    reported = [r.getMessage() for r in caplog.records if r.name == "batch_predict"]
    assert [m.split(": ")[0] for m in reported] == [f"{source} line {n}" for n in (3, 6, 8, 9)]


def test_bad_jsonl_rows_are_reported_with_line_numbers_and_marked(export_dir, tmp_path, caplog):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(
        b'{"id": 1, "review": "a fine film"}\n'
        b'{"id": 2}\n'                      # missing field
        b"not json\n"
        b"\n"                               # blank: no row
        b'["a list"]\n'
        b'{"id": 5, "review": 7}\n'         # not a string
        b'{"id": 6, "review": null}\n'
        b'{"id": 7, "review": "bad \xff byte"}\n'  # not UTF-8
        b'{"id": 8, "review": "nul \\u0000 inside"}\n'
        b'{"id": 9, "review": "awful"}'     # no final newline
    )
    summary = run(source, target, column="review", artifact=export_dir)
    rows = [json.loads(line) for line in target.read_text().splitlines()]

    assert len(rows) == summary["rows"] == 9 and summary["skipped_bad_rows"] == 7
    errors = {r["error"].split(":")[0]: r["error"].split(": ")[1] for r in rows if r["error"]}
    assert errors == {"line 2": "missing_field", "line 3": "invalid_json", "line 5": "wrong_type", "line 6": "wrong_type",
                      "line 7": "missing_field", "line 8": "invalid_json", "line 9": "null_byte"}
    assert [r["id"] for r in rows if r["error"] is None] == [1, 9]
    assert all(r["probability"] is None and r["label"] is None for r in rows if r["error"])
    assert rows[4]["review"] == 7  # the input value is kept as it was
    assert sum("line " in r.getMessage() for r in caplog.records if r.name == "batch_predict") == 7


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_round_trip_keeps_every_row_and_column(export_dir, tmp_path, fmt):
    rows = pd.DataFrame({"id": ["a", "b", "c", "d"], "text": GOOD + [""], "source": ["x", "y", "z", "w"]})
    source, target = tmp_path / f"in.{fmt}", tmp_path / f"out.{fmt}"
    {"csv": lambda: rows.to_csv(source, index=False), "parquet": lambda: rows.to_parquet(source),
     "jsonl": lambda: rows.to_json(source, orient="records", lines=True)}[fmt]()

    run(source, target, artifact=export_dir)
    read = {"csv": lambda p: pd.read_csv(p, keep_default_na=False, na_values={"probability": [""], "label": [""], "error": [""]}),
            "parquet": pd.read_parquet, "jsonl": lambda p: pd.DataFrame(map(json.loads, p.read_text().splitlines()))}[fmt]
    out = read(target)

    assert list(out.columns) == ["id", "text", "source", "probability", "label", "error"]
    assert out[["id", "text", "source"]].astype(str).values.tolist() == rows.values.tolist()
    reference = score_texts(export_dir, GOOD, tmp_path)["probability"].tolist()
    assert out["probability"].tolist()[:3] == reference  # full precision survives every format
    assert math.isnan(out["probability"].iloc[3]) and pd.isna(out["label"].iloc[3])
    assert out["error"].iloc[3] == ("row 4" if fmt == "parquet" else "line 5" if fmt == "csv" else "line 4") + ": empty_text: text is empty or whitespace only"


def test_crash_while_writing_leaves_no_output_and_no_temporary_file(export_dir, tmp_path, monkeypatch):
    source = tmp_path / "in.csv"
    source.write_text("text\n" + "".join(f"{t}\n" for t in GOOD))

    def crash(frame, path):
        with open(path, "w") as f:
            f.write("text,probability\nhalf a row,0.")
        raise OSError("disk full")

    monkeypatch.setitem(batch_predict.WRITERS, ".csv", crash)
    fresh, existing = tmp_path / "out" / "new.csv", tmp_path / "out" / "old.csv"
    existing.parent.mkdir()
    existing.write_text("the previous complete result\n")
    for target in (fresh, existing):
        with pytest.raises(OSError, match="disk full"):
            run(source, target, artifact=export_dir)
    assert not fresh.exists()
    assert existing.read_text() == "the previous complete result\n"
    assert sorted(p.name for p in existing.parent.iterdir()) == ["old.csv"]  # no temporary file left

    monkeypatch.undo()
    run(source, existing, artifact=export_dir)  # and a run that finishes replaces it
    assert len(pd.read_csv(existing)) == len(GOOD)
    assert sorted(p.name for p in existing.parent.iterdir()) == ["old.csv"]


def test_cli_prints_the_summary_and_refuses_what_it_cannot_do(export_dir, tmp_path, capsys):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in GOOD) + '{"text": ""}\n')
    summary = batch_predict.main([str(source), str(tmp_path / "out.csv"), "--artifact", str(export_dir)])
    printed = capsys.readouterr().out
    assert f"rows 4  scored 3  skipped bad rows 1  positives {summary['positives']}  " in printed
    assert "rows/s" in printed and summary["rows_per_s"] > 0

    with pytest.raises(SystemExit, match="unsupported extension '.txt'"):
        run(source, tmp_path / "out.txt", artifact=export_dir)
    with pytest.raises(SystemExit, match="no row has a 'review' field"):
        run(source, tmp_path / "out.csv", column="review", artifact=export_dir)
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("text,label\ngood,1\n")
    with pytest.raises(SystemExit, match=r"already has column\(s\) \['label'\]"):
        run(labelled, tmp_path / "out.csv", artifact=export_dir)
    assert not (tmp_path / "out.txt").exists()


def test_empty_input_gives_an_empty_output_with_the_columns(export_dir, tmp_path):
    source, target = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_text("id,text\n")
    assert run(source, target, artifact=export_dir)["rows"] == 0
    assert target.read_text().strip() == "id,text,probability,label,error"


def test_endpoint_mode_matches_the_local_core(export_dir, server, tmp_path):
    texts = load_dataset()[0][:150] + [""]  # three requests of signature.max_texts, and a bad row not sent
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    local, remote = tmp_path / "local.parquet", tmp_path / "remote.parquet"
    run(source, local, artifact=export_dir)
    summary = run(source, remote, artifact=export_dir, endpoint=f"{server.inference}/predictions/sentiment", workers=2)
    a, b = pd.read_parquet(local), pd.read_parquet(remote)
    assert summary["scored"] == 150 and summary["skipped_bad_rows"] == 1
    assert (a["probability"] - b["probability"]).abs().max() <= 5e-7  # the server rounds to 6 decimals
    assert a["error"].fillna("").tolist() == b["error"].fillna("").tolist()


# --- lone surrogates: marked, and every output format still written ------------------------------------

SURROGATES = (  # JSON escapes: json.loads makes a lone surrogate of each unpaired one
    '{"id": 1, "text": "fine \\ud800 film", "source": "x"}\n'
    '{"id": 2, "text": "a good film", "source": "caf\\udfff", "meta": {"note": "\\ud83d"}}\n'
    '{"id": 3, "text": "\\ud83d\\ude00 a pair is one character, fine", "source": "z"}\n'
    '{"id": 4, "text": "a lone low one at the end \\udc00", "source": "w"}\n'
)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_lone_surrogates_are_marked_and_every_format_is_written(export_dir, tmp_path, capsys, fmt):
    """Regression: a lone surrogate passed the checks and crashed the writer (UTF-8 cannot hold it), so the
    whole file was lost. Its row is marked lone_surrogate, the row's columns kept; a surrogate in another
    column of a good row is kept too. Unencodable text is written as its backslash escape: JSON's own in
    JSONL (read back, it is the input string), the six characters `\\ud800` in CSV and Parquet."""
    source, target = tmp_path / "in.jsonl", tmp_path / f"out.{fmt}"
    source.write_text(SURROGATES)
    summary = batch_predict.main([str(source), str(target), "--artifact", str(export_dir)])
    assert "rows 4  scored 2  skipped bad rows 2" in capsys.readouterr().out
    assert (summary["rows"], summary["scored"]) == (4, 2)

    if fmt == "parquet":
        rows = pd.read_parquet(target).to_dict("records")
    else:
        text = target.read_bytes().decode("utf-8")  # valid UTF-8
        rows = [json.loads(line) for line in text.splitlines()] if fmt == "jsonl" else \
            pd.read_csv(target, dtype=str, keep_default_na=False).to_dict("records")
    escaped = fmt != "jsonl"
    assert [str(r["id"]) for r in rows] == ["1", "2", "3", "4"]
    assert [r["source"] for r in rows] == ["x", "caf\\udfff" if escaped else "caf\udfff", "z", "w"]
    assert rows[0]["text"] == ("fine \\ud800 film" if escaped else "fine \ud800 film")
    assert rows[3]["text"].endswith("\\udc00" if escaped else "\udc00")
    assert [str(r["error"])[:23] for r in (rows[0], rows[3])] == ["line 1: lone_surrogate:", "line 4: lone_surrogate:"]
    for good in (rows[1], rows[2]):
        assert 0 <= float(good["probability"]) <= 1 and good["label"] in ("positive", "negative")
    if fmt == "jsonl":
        assert rows[1]["meta"] == {"note": "\ud83d"}  # JSON's escape: read back exactly as it came in


# --- --endpoint: the served version's signature and limits ----------------------------------------------

@pytest.fixture(scope="module")
def v2_default(both_versions):
    """v1 and the quick v2 (tests/quick_v2.py) on one TorchServe, v2 the default version (as `make serve VERSION=2`)."""
    both_versions.admin.set_default("2")
    yield both_versions
    both_versions.admin.set_default("1")


def write_texts(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_endpoint_refuses_a_local_signature_of_another_version(v2_default, export_dir, tmp_path):
    """Regression: against a server serving v2, --endpoint labelled v2's probabilities with the local v1
    signature and sent v1's request sizes. Now the server's answer names the version, and another
    version's --artifact is refused, naming both."""
    source, target = write_texts(tmp_path / "in.jsonl", ["a fine film"]), tmp_path / "out.csv"
    url = f"{v2_default.inference}/predictions/sentiment"
    with pytest.raises(SystemExit, match=rf"{url} serves model version 2, but {export_dir} is version 1"):
        batch_predict.main([str(source), str(target), "--endpoint", url, "--artifact", str(export_dir)])
    assert not target.exists()


@pytest.mark.parametrize("version", ["2", "1"])
def test_endpoint_scores_with_the_served_versions_signature_and_limits(v2_default, export_dir, tmp_path, monkeypatch, version):
    """Without --artifact, the signature is build/v<served version>/export's: v2 (the default) gets v2's
    request sizes, for predictions (max_texts) and explanations (max_explain_texts, fewer), and the same
    answers as scoring locally with v2's export; a URL naming version 1 gets v1's."""
    build = tmp_path / "build"
    (build / "v2").mkdir(parents=True)
    (build / "v2" / "export").symlink_to(quick_v2.EXPORT)
    (build / "v1").mkdir()
    (build / "v1" / "export").symlink_to(export_dir)
    monkeypatch.setattr(batch_predict, "BUILD", build)
    sent = []  # (url, texts) of every request on the wire
    post = requests.Session.post
    monkeypatch.setattr(requests.Session, "post", lambda self, url, json, **kw: sent.append((url, len(json["texts"]))) or post(self, url, json=json, **kw))

    artifact = quick_v2.EXPORT if version == "2" else export_dir
    signature = Signature.load(artifact)
    url = f"{v2_default.inference}/predictions/sentiment" + ("" if version == "2" else "/1")
    texts = load_dataset()[0][: signature.max_texts + 3]
    source = write_texts(tmp_path / "in.jsonl", texts + [""])
    batch_predict.main([str(source), str(tmp_path / "remote.parquet"), "--endpoint", url])
    run(source, tmp_path / "local.parquet", artifact=artifact)
    remote, local = pd.read_parquet(tmp_path / "remote.parquet"), pd.read_parquet(tmp_path / "local.parquet")
    # both round to 6 decimals; a float32 core's logits move by ~1e-7 with what else is in a forward pass (one rounding
    # step), v2's int8 core's by up to its batch_tolerance (activations scaled per pass): labels agree away from the threshold
    # (the bound is measured on export's probe texts, not every text's: twice it, as a CI run saw 0.142 against 0.119)
    tolerance = max(1e-6 + 1e-12, 2 * signature.batch_tolerance)
    assert (remote["probability"] - local["probability"]).abs().max() <= tolerance
    sure = (local["probability"] - signature.threshold).abs() > tolerance
    assert sure.sum() > len(texts) / 2 and remote["label"][sure].tolist() == local["label"][sure].tolist()
    assert remote["error"].fillna("").tolist() == local["error"].fillna("").tolist()
    predictions = [n for u, n in sent if "/predictions/" in u]
    assert max(predictions) == signature.max_texts and sum(predictions) >= len(texts)  # requests of the served version's size

    sent.clear()
    few = texts[:3]
    source = write_texts(tmp_path / "few.jsonl", few)
    batch_predict.main([str(source), str(tmp_path / "explained.jsonl"), "--endpoint", url, "--explain", "2"])
    explained = [json.loads(line) for line in (tmp_path / "explained.jsonl").read_text().splitlines()]
    assert all(row["error"] is None and row["positive_words"] is not None for row in explained)
    size = signature.max_explain_texts  # v2: 1, v1: max_texts
    explaining = [n for u, n in sent if "/explanations/" in u]  # a 503 retried is sent twice
    assert max(explaining) == min(size, len(few)) and sum(explaining) >= len(few), explaining

def test_endpoint_explanations_keep_within_the_served_character_limit(export_dir, server, signature, tmp_path, monkeypatch):
    """An explanation request may hold max_explain_chars characters of words in all (payload.answer_chars:
    its answer grows with its words): ten reviews of 9,000 characters go in several requests within it,
    each answered, as scored locally."""
    snippets = load_dataset()[0]
    reviews = [" ".join(snippets[i * 100 : i * 100 + 100])[:9000] for i in range(10)]
    assert min(map(len, reviews)) == 9000 and 10 * 9000 > signature.max_explain_chars
    sent = []
    post = requests.Session.post
    monkeypatch.setattr(requests.Session, "post", lambda self, url, json, **kw: sent.append((url, json["texts"])) or post(self, url, json=json, **kw))
    source = write_texts(tmp_path / "in.jsonl", reviews)
    run(source, tmp_path / "remote.jsonl", artifact=export_dir, endpoint=f"{server.inference}/predictions/sentiment", explain=3)
    run(source, tmp_path / "local.jsonl", artifact=export_dir, explain=3)
    remote, local = ([json.loads(line) for line in (tmp_path / name).read_text().splitlines()] for name in ("remote.jsonl", "local.jsonl"))
    assert [[w["word"] for w in row["positive_words"]] for row in remote] == [[w["word"] for w in row["positive_words"]] for row in local]
    explained = [texts for url, texts in sent if "/explanations/" in url]
    assert len(explained) > 1 and sum(map(len, explained)) == len(reviews)
    assert max(sum(map(answer_chars, texts)) for texts in explained) <= signature.max_explain_chars


def test_endpoint_keeps_scoring_its_version_when_the_default_changes_mid_run(v2_default):
    """The run is pinned to the version its probe answered (the versioned URL), so a default version
    switched while scoring changes nothing for it; an answer from another version would still stop it."""
    endpoint = Endpoint(f"{v2_default.inference}/predictions/sentiment", quick_v2.EXPORT, workers=1)
    assert endpoint.signature.version == "2" and endpoint.url.endswith("/predictions/sentiment/2")
    first = endpoint(["a fine film"])
    v2_default.admin.set_default("1")
    try:
        assert endpoint(["a fine film"]) == first  # v2 still, not v1
    finally:
        v2_default.admin.set_default("2")
    endpoint.url = f"{v2_default.inference}/predictions/sentiment/1"  # as if the server answered from another version
    with pytest.raises(RuntimeError, match="answered as model version 1, but this run scores with version 2"):
        endpoint(["a fine film"])
