"""Continued evaluation: score a labelled set with the model a running TorchServe serves.

    python -m sentiment.ops.evaluate                                   # held-out test split, default version
    python -m sentiment.ops.evaluate --version 2 --out build/v2/served-evaluation.json
    python -m sentiment.ops.evaluate --data reviews.csv --url http://127.0.0.1:8080
    python -m sentiment.ops.evaluate --version 3 --data fresh.csv --held-out   # only the fresh labels v3's training held out

The labelled set is a CSV file (header with `text` and `label` columns) or a JSONL file (one
object with `text` and `label` a line); labels are 1/0 or the signature's label names. Without
--data it is the held-out test split of sentiment/training/nbsvm.py (same SPLIT_SEED, so every model version is scored
on the same texts as in training). The served model's signature (--artifact, by default
build/v<version>/export/signature.json) gives the label names and the request limit: the texts go
to POST <url>/predictions/<model>[/<version>] as {"texts": [...]} in chunks of at most its
max_texts, and every answer must come from that version. The served labels give the accuracy, the
served probabilities the ROC AUC. Prints the result as JSON (and writes it to --out).

`--held-out` keeps only the rows of --data that training with `--fresh` (sentiment/training/nbsvm.py, sentiment/training/transformer.py)
holds out by a hash of the text: a version retrained on fresh labels is scored, and compared with
the one it would replace, on labels it never trained on.

`accuracy` and `roc_auc` are rounded to 4 places as in sentiment/training/nbsvm.py's metrics.json, so the two can be
compared directly: the served model should score exactly what training reported.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import requests
from sklearn.metrics import roc_auc_score

from sentiment.data import held_out_rows, held_out_test_split, load_labelled
from sentiment.serving.signature import MODEL_NAME, Signature

DEFAULT_URL = "http://127.0.0.1:8080"
ROOT = Path(__file__).resolve().parents[2]


def predict_served(texts: list[str], chunk: int, url: str = DEFAULT_URL, model: str = MODEL_NAME, version: str | None = None,
                   timeout: float = 30) -> tuple[list[dict], set[str]]:
    """The served predictions ({"label", "probability"}) for every text, in order, and the model
    versions that answered. Any non-200 answer stops the evaluation with the server's message."""
    endpoint = f"{url.rstrip('/')}/predictions/{model}" + (f"/{version}" if version else "")
    predictions, versions = [], set()
    with requests.Session() as session:
        for start in range(0, len(texts), chunk):
            response = session.post(endpoint, json={"texts": texts[start : start + chunk]}, timeout=timeout)
            if response.status_code != 200:
                raise RuntimeError(f"{endpoint} answered {response.status_code} for texts {start}..{start + chunk - 1}: "
                                   f"{response.text[:500]}")
            body = response.json()
            predictions += body["predictions"]
            versions.add(str(body.get("model_version")))
    return predictions, versions


def evaluate_served(texts: list[str], labels: list[int], signature: Signature, url: str = DEFAULT_URL,
                    model: str = MODEL_NAME, version: str | None = None, chunk: int | None = None) -> dict:
    """Accuracy and ROC AUC of what `url` serves, against 0/1 `labels`; `signature` is the served model's."""
    started = time.perf_counter()
    chunk = min(chunk or signature.max_texts, signature.max_texts)
    predictions, versions = predict_served(texts, chunk, url, model, version)
    if versions != {signature.version}:
        raise RuntimeError(f"answers came from model version(s) {sorted(versions)}, but the signature is version {signature.version}")
    positive = signature.labels[1]
    correct = sum((p["label"] == positive) == bool(y) for p, y in zip(predictions, labels))
    probabilities = [p["probability"] for p in predictions]
    return {
        "accuracy": round(correct / len(labels), 4),
        "roc_auc": round(float(roc_auc_score(labels, probabilities)), 4) if len(set(labels)) == 2 else None,
        "size": len(labels),
        "correct": correct,
        "positive_rate": round(sum(p["label"] == positive for p in predictions) / len(predictions), 4),
        "model": model,
        "requested_version": version,
        "served_versions": sorted(versions),
        "url": url,
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="labelled CSV or JSONL file (default: sentiment/training/nbsvm.py's held-out test split)")
    parser.add_argument("--url", default=DEFAULT_URL, help="TorchServe inference address (default %(default)s)")
    parser.add_argument("--model", default=MODEL_NAME)
    parser.add_argument("--version", help="a registered model version (default: the model's default version)")
    parser.add_argument("--artifact", type=Path, help="the served version's export folder, for its signature "
                        "(default: build/v<version, or 1>/export)")
    parser.add_argument("--held-out", action="store_true", help="with --data: only its rows that training with "
                        "--fresh holds out (train.is_held_out)")
    parser.add_argument("--chunk", type=int, help="texts per request (default and at most: the signature's max_texts)")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--out", type=Path, help="also write the result JSON here")
    args = parser.parse_args(argv)
    if args.held_out and not args.data:
        parser.error("--held-out needs --data (the held-out test split is held out already)")

    signature = Signature.load(args.artifact or ROOT / "build" / f"v{args.version or 1}" / "export")
    if args.data:
        texts, labels = load_labelled(args.data, signature.labels, args.text_column, args.label_column)
        if args.held_out:
            texts, labels = held_out_rows(texts, labels)
    else:
        texts, labels = held_out_test_split()
    result = evaluate_served(texts, labels, signature, args.url, args.model, args.version, args.chunk)
    result["data"] = (str(args.data) + (" (rows held out of training: data.is_held_out)" if args.held_out else "")
                      if args.data else "held-out test split (train.split, SPLIT_SEED)")
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, ValueError, OSError, requests.RequestException) as error:
        sys.exit(f"sentiment/ops/evaluate.py: {error}")
