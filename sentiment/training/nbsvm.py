"""Train the sentiment classifier (v1, NBSVM) on rt-polarity and IMDB; write a checkpoint, its vocabulary and its metrics.

    python -m sentiment.training.nbsvm --out build/v1            # ~2 min on 2 CPU cores (bench/results/models.json)

    python -m sentiment.training.nbsvm --out build/v3 --fresh fresh.csv   # + fresh labelled reviews (columns text, label)

The data and their split: sentiment/data.py (`subsets`, shared with the transformer's training).
`python -m sentiment.ops.evaluate --data fresh.csv --held-out` scores a served version on exactly the
fresh labels that training held out.

The model: the MAX_VOCAB most frequent word 1-2-grams and character 2-5-grams, each count scaled by
its naive-Bayes log-count ratio, then an L2-penalised logistic regression fitted by full-batch
L-BFGS (Wang & Manning 2012's NBSVM with a logistic loss); its weights and bias load into
core.SentimentClassifier, the core that is exported and served.
"""

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.metrics import log_loss, roc_auc_score
from tqdm import tqdm

from sentiment.data import DATA_DIR, FRESH_HELD_OUT, IMDB_DIR, SPLIT_SEED, Fresh, load_dataset, load_imdb, subsets
from sentiment.serving.core import ModelConfig, SentimentClassifier, naive_bayes_scale, predict_proba
from sentiment.serving.text import Encoder, Features, build_vocab

FEATURES = Features(word_ngram=2, char_low=2, char_high=5)  # see text.Features
MIN_COUNT = 2  # an n-gram seen once in training gets a weight from one text: noise
MAX_VOCAB = 200_000  # the most frequent features: bounds the archive and a worker's memory; on validation 200k, 400k and
# all 592k seen twice score alike (rt 0.800 / 0.801 / 0.802, IMDB 0.909 / 0.911 / 0.910 at L2 1e-3, docs/models.md)
L2 = 1e-3  # the weights' L2 penalty, chosen on the validation sets at 400k features (rt / IMDB accuracy: 1e-6 0.781 / 0.885,
# 1e-5 0.791 / 0.890, 1e-4 0.795 / 0.902, 3e-4 0.800 / 0.905, 1e-3 0.801 / 0.911, 3e-3 0.796 / 0.905)
MAX_ITER = 100  # L-BFGS steps at most (it stops earlier once converged)

log = logging.getLogger("train")

def fresh_metrics(fresh: Fresh | None, subset: dict, model, encoder) -> dict:
    """Where the fresh rows went, and the held-out ones' scores; nothing without fresh rows."""
    if fresh is None:
        return {}
    held_out = subset["fresh_test"]
    return {"fresh": {"files_md5": fresh.md5, "rows": len(fresh.labels), "held_out": len(held_out[1]), "held_out_share": FRESH_HELD_OUT},
            **({"fresh_test": evaluate(model, *held_out, encoder)} if held_out[1] else {})}


def evaluate(core, texts: list[str], labels: list[int], encoder, threshold: float = 0.5) -> dict:
    """Accuracy, ROC AUC and log loss of the core's own sigmoid(logit) (before calibration), rounded to 4 places."""
    probs = predict_proba(core, texts, encoder)
    y = torch.tensor(labels)
    return {
        "accuracy": round(((probs >= threshold).long() == y).float().mean().item(), 4),
        "roc_auc": round(float(roc_auc_score(labels, probs.numpy())), 4) if len(set(labels)) == 2 else None,
        "log_loss": round(float(log_loss(labels, probs.double().clamp(1e-7, 1 - 1e-7).numpy(), labels=[0, 1])), 4),
        "size": len(labels),
    }


def bag_matrix(encoder: Encoder, texts: list[str], desc: str) -> sparse.csr_matrix:
    """Texts x features, each feature's count in the text: what the core's EmbeddingBag sums, as a matrix."""
    indptr, indices, counts = [0], [], []
    for text in tqdm(texts, desc=desc, unit="text", mininterval=2):
        ids, n = np.unique(np.array(encoder(text), dtype=np.int32), return_counts=True)
        indices.append(ids)
        counts.append(n.astype(np.float32))
        indptr.append(indptr[-1] + len(ids))
    empty = [np.zeros(0, np.int32)]
    return sparse.csr_matrix((np.concatenate(counts or empty).astype(np.float32), np.concatenate(indices or empty), np.array(indptr)),
                             shape=(len(texts), len(encoder.index)))


def fit_weights(features: sparse.csr_matrix, labels: list[int], l2: float = L2, max_iter: int = MAX_ITER) -> tuple[np.ndarray, float]:
    """The NBSVM's per-feature weights and bias: logistic regression on the naive-Bayes-scaled counts, L2-penalised,
    fitted by full-batch L-BFGS (deterministic: no seed, no batch order)."""
    y = np.asarray(labels, dtype=np.float64)
    n, d = features.shape
    transposed = features.T.tocsr()

    def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = params[:d], params[d]
        z = features @ w.astype(np.float32) + b
        loss = float(np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * w @ w)
        residual = (expit(z) - y) / n
        return loss, np.concatenate([transposed @ residual.astype(np.float32) + l2 * w, [residual.sum()]])

    progress = tqdm(total=max_iter, desc="fitting (L-BFGS)", unit="step", mininterval=2)
    fit = minimize(loss_and_grad, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"maxiter": max_iter},
                   callback=lambda _: progress.update())
    progress.close()
    return fit.x[:d], float(fit.x[d])


def train(texts: list[str], labels: list[int], seed: int, fresh: Fresh | None = None,
          imdb: tuple[list[str], list[int]] | None = None) -> tuple[SentimentClassifier, ModelConfig, list[str], dict]:
    """The NBSVM on the training rows of `subsets` (rt-polarity, fresh labels, IMDB train when given). `seed` is
    recorded only: the fit is deterministic."""
    subset = subsets(texts, labels, fresh, imdb)
    train_texts, train_labels = subset["train"]

    vocab = build_vocab(tqdm(train_texts, desc="vocabulary", unit="text", mininterval=2), FEATURES, MIN_COUNT, MAX_VOCAB)
    encoder = Encoder({gram: i for i, gram in enumerate(vocab)}, FEATURES)
    counts = bag_matrix(encoder, train_texts, "features")
    scale = naive_bayes_scale(counts, train_labels)
    scaled = counts @ sparse.diags(scale.numpy())  # each count times its feature's NB scale: the EmbeddingBag's per-sample weight
    weight, bias = fit_weights(scaled.tocsr(), train_labels)

    config = ModelConfig(vocab_size=len(vocab))
    model = SentimentClassifier(config, scale)
    with torch.no_grad():
        model.weight.weight[:, 0] = torch.from_numpy(weight)
        model.bias[0] = bias
    model.eval()
    metrics = {
        "test": evaluate(model, *subset["test"], encoder),
        "validation": evaluate(model, *subset["validation"], encoder),
        **({"imdb_validation": evaluate(model, *subset["imdb_validation"], encoder)} if imdb else {}),
        "train_size": len(train_labels),
        "vocab_size": len(vocab),
        "seed": seed,
        "split_seed": SPLIT_SEED,
        **fresh_metrics(fresh, subset, model, encoder),
    }
    return model, config, vocab, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_DIR)
    parser.add_argument("--imdb", type=Path, default=IMDB_DIR, help="the IMDB folder (default %(default)s)")
    parser.add_argument("--no-imdb", action="store_true", help="rt-polarity alone, as v1 was trained before issue 25")
    parser.add_argument("--out", type=Path, default=Path("build/v1"))
    parser.add_argument("--seed", type=int, default=1, help="recorded (every trainer takes one); the fit has no randomness")
    parser.add_argument("--fresh", type=Path, action="append", default=[], help="fresh labelled reviews, CSV or JSONL "
                        "(text, label); repeatable. A hash of each text holds FRESH_HELD_OUT of them out of training")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    started = time.perf_counter()
    texts, labels, md5 = load_dataset(args.data)
    imdb = None if args.no_imdb else load_imdb("train", args.imdb)
    model, config, vocab, metrics = train(texts, labels, args.seed, Fresh.load(args.fresh) if args.fresh else None,
                                          imdb[:2] if imdb else None)
    metrics.update(train_seconds=round(time.perf_counter() - started, 1), data_md5=md5, data_dir=str(args.data.resolve()))
    if imdb:
        metrics.update(imdb_md5=imdb[2], imdb_dir=str(args.imdb.resolve()))

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(config), "features": asdict(FEATURES), "state_dict": model.state_dict()}, args.out / "checkpoint.pt")
    (args.out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name in ("test", "validation", "imdb_validation"):
        if name in metrics:
            log.info("%-16s accuracy %.4f  ROC AUC %.4f  log loss %.4f  (n=%d)", name, metrics[name]["accuracy"],
                     metrics[name]["roc_auc"], metrics[name]["log_loss"], metrics[name]["size"])
    log.info("%d features, %.1f s -> %s", len(vocab), metrics["train_seconds"], args.out)


if __name__ == "__main__":
    main()
