"""Which words made a prediction: per-word attributions for both model versions. Pure functions of an
exported core and its featuriser (no TorchServe import), used by the handler and batch scoring.

An explanation splits the logit into `base` (the logit with no evidence) plus one contribution per
word, each word with its character offsets in the text the client sent:

    logit = base + sum(word contributions),   probability = calibrated sigmoid(logit) (the signature's map)

v1 (NBSVM) is exact: its logit is the bias plus one term per feature, weight x naive-Bayes scale.
Each word n-gram's term is split evenly between its words and each character n-gram's goes to its
word, so the sum is the logit to float64 rounding (the logit of the same core run in float64; the
served float32 core's differs from it by its own rounding, about 1e-6 of the terms' magnitudes).

v2 (the transformer) uses Integrated Gradients (Sundararajan et al., 2017) on the input embeddings
(the output of `embed`, which `classify` takes), against the [CLS] [PAD] ... [PAD] [SEP] input of the
same length: `base` is the logit of that no-word input. The path integral is computed with
Gauss-Legendre quadrature (as Captum's default), `STEPS` points, one forward and backward pass of
the encoder each; word-piece attributions are summed per word (the tokenizer's word split). IG's
sums equal logit - base only in the limit of many steps: each explanation reports its
`completeness_error`, |base + sum - logit|.
"""

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from sentiment.serving.signature import TRANSFORMER, Signature
from sentiment.serving.text import Encoder, WordPieceEncoder, blank_tags, ngrams, token_spans

# Integrated Gradients points for v2: each costs one forward and backward pass of the encoder over the
# text's word pieces. On test reviews 32 points err by a median 0.001 logit, 95th percentile 0.04 (16: 0.1
# and 0.85; 8: 1.1 and 5.4): README, "Explanations". model-config.yaml's `handler: {explain_steps: N}` overrides it.
STEPS = 32
MAX_ROWS = 16  # path points per forward/backward pass: bounds memory (rows x 256 pieces x 384 x 6 layers)


@dataclass
class Word:
    """One word as the model read it (`token`), where it is in the client's text, and its share of the logit."""

    token: str
    start: int  # character offsets into the text as sent: text[start:end]
    end: int
    contribution: float


@dataclass
class Explanation:
    base: float  # the logit with no evidence
    logit: float  # the model's logit for the text
    words: list[Word]
    method: str

    @property
    def completeness_error(self) -> float:
        return abs(self.base + math.fsum(w.contribution for w in self.words) - self.logit)

    def as_dict(self) -> dict:
        """The explanation fields of an answer (the handler adds label, probability and model version)."""
        return {"base": self.base, "logit": self.logit, "method": self.method,
                "completeness_error": self.completeness_error,
                "tokens": [{"token": w.token, "start": w.start, "end": w.end, "contribution": w.contribution} for w in self.words]}


def top_words(tokens: list[dict], k: int) -> tuple[list[dict], list[dict]]:
    """The k words that pushed most towards positive and towards negative, occurrences of a word summed."""
    totals: dict[str, float] = {}
    for token in tokens:
        totals[token["token"]] = totals.get(token["token"], 0.0) + token["contribution"]
    ranked = sorted(totals.items(), key=lambda item: item[1])
    positive = [{"word": w, "contribution": c} for w, c in reversed(ranked[-k:]) if c > 0] if k else []
    negative = [{"word": w, "contribution": c} for w, c in ranked[:k] if c < 0]
    return positive, negative


class NbsvmExplainer:
    """v1, exact: every feature term of the logit attributed to the words it was made from."""

    method = "exact"

    def __init__(self, core, encoder: Encoder):
        # The same core in float64 gives the logit the contributions add up to: the served core sums its
        # hundreds of float32 terms with a rounding error of up to ~1e-6 of their magnitudes (1.5e-5 on the
        # test split), which would hide how exact the attribution is. The answered probability is the served core's.
        self.encoder = encoder
        with torch.no_grad():  # (a copy made with autograd on has non-leaf parameters)
            self.exact = copy.deepcopy(core).double()
            # The term of feature f: weight[f] x feature_scale[f], the core's per-sample-weighted EmbeddingBag.
            self.terms = (self.exact.weight.weight[:, 0] * self.exact.feature_scale).numpy()  # not a list: 189k floats as objects cost a worker 6 MB
            self.base = float(self.exact.bias[0])

    def features(self, tokens: list[str]) -> list[tuple[int, range]]:
        """Each feature id of the text (the ids `Encoder` gives, in its order) with the tokens it was made from."""
        n, index = self.encoder.features.word_ngram, self.encoder.index
        # text.ngrams lists all unigrams, then all bigrams, ...: the n-gram at i of size s covers tokens i..i+s-1.
        where = [range(i, i + size) for size in range(1, n + 1) for i in range(len(tokens) - size + 1)]
        found = [(index.get(gram), span) for gram, span in zip(ngrams(tokens, n), where)]
        found = [(f, span) for f, span in found if f is not None]
        # A word's character n-gram ids, from the Encoder's own per-word cache (the same ids it encodes).
        return found + [(f, range(i, i + 1)) for i, token in enumerate(tokens) for f in self.encoder._char_ids(token)]

    def __call__(self, text: str) -> Explanation:
        spans = token_spans(text)
        contributions = [0.0] * len(spans)
        terms = self.terms
        for feature, tokens in self.features([token for token, _, _ in spans]):
            share = float(terms[feature]) / len(tokens)
            for i in tokens:
                contributions[i] += share
        with torch.inference_mode():
            logit = float(self.exact(*self.encoder.inputs([text]))[0])
        words = [Word(token, start, end, c) for (token, start, end), c in zip(spans, contributions)]
        return Explanation(self.base, logit, words, self.method)

    def probe(self) -> tuple["NbsvmExplainer", int]:
        """What cost.measure_cost times, and by what it multiplies that: itself, once."""
        return self, 1


class IntegratedGradientsExplainer:
    """v2: Integrated Gradients on the input embeddings, summed from word pieces to words."""

    def __init__(self, core, encoder: WordPieceEncoder, steps: int = STEPS):
        self.core, self.encoder, self.steps = core, encoder, steps
        self.method = f"integrated_gradients(steps={steps})"
        self.pad = encoder.tokenizer.token_to_id("[PAD]")
        for parameter in core.parameters():  # an exported core is never trained: no weight gradients to compute
            parameter.requires_grad_(False)
        nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]; mapped to [0, 1]
        self.alphas = torch.tensor((nodes + 1) / 2, dtype=torch.float32)
        self.weights = torch.tensor(weights / 2, dtype=torch.float32)

    def pieces(self, text: str) -> tuple[list[int], list[tuple[str, int, int, tuple[int, int]]]]:
        """The core's input ids ([CLS] ... [SEP], from the featuriser) and, per kept word piece, its token,
        offsets in `text` and (word number, piece number), so that pieces of one word on either side of
        the cut stay apart. The head + tail cut is the featuriser's, re-applied to the offsets."""
        (ids,) = self.encoder.token_ids([text])
        encoding = self.encoder.tokenizer.encode(blank_tags(text), add_special_tokens=False)
        keep, head = self.encoder.max_length - 2, self.encoder.head_tokens
        kept = range(len(encoding.ids))
        if len(kept) > keep:
            kept = [*range(head), *range(len(kept) - (keep - head), len(kept))]
        if [encoding.ids[i] for i in kept] != ids[1:-1]:
            raise RuntimeError("word-piece offsets out of step with the featuriser")
        return ids, [(encoding.tokens[i], *encoding.offsets[i], (encoding.word_ids[i], i)) for i in kept]

    def __call__(self, text: str) -> Explanation:
        ids, pieces = self.pieces(text)
        input_ids = torch.tensor([ids, [ids[0], *[self.pad] * (len(ids) - 2), ids[-1]]])
        mask = torch.ones_like(input_ids[:1])
        with torch.inference_mode(False), torch.enable_grad():
            with torch.no_grad():
                embedded = self.core.embed(input_ids)  # [2, length, hidden]: the text, the baseline
                logit, base = self.core.classify(embedded, mask.expand(2, -1)).tolist()
            x, baseline = embedded[:1], embedded[1:]
            gradient = torch.zeros_like(x)
            for start in range(0, self.steps, MAX_ROWS):
                alphas = self.alphas[start : start + MAX_ROWS, None, None]
                path = (baseline + alphas * (x - baseline)).requires_grad_(True)
                (grads,) = torch.autograd.grad(self.core.classify(path, mask.expand(len(path), -1)).sum(), path)
                gradient += (self.weights[start : start + MAX_ROWS, None, None] * grads).sum(0, keepdim=True)
            attributions = ((x - baseline) * gradient).sum(-1)[0, 1:-1].double().tolist()  # [CLS]/[SEP] are the baseline's: 0
        return Explanation(base, logit, words_of(pieces, attributions), self.method)

    def probe(self) -> tuple["IntegratedGradientsExplainer", int]:
        """What cost.measure_cost times, and by what it multiplies that: the explanation with one
        pass of MAX_ROWS path points (the text's and the baseline's forward pass, then one forward and
        backward pass of MAX_ROWS rows) x the passes of `steps` points, an upper bound on this one (which
        does that forward once): a one-point probe x steps overestimated it fourfold (a pass of 16 rows
        costs far less than 16 of one row)."""
        return IntegratedGradientsExplainer(self.core, self.encoder, min(self.steps, MAX_ROWS)), math.ceil(self.steps / MAX_ROWS)


def words_of(pieces: list[tuple[str, int, int, tuple[int, int]]], attributions: list[float]) -> list[Word]:
    """Word pieces -> words: consecutive pieces of one word joined ("##" dropped), their attributions summed."""
    words: list[Word] = []
    last = (None, -2)
    for (piece, start, end, (word, i)), attribution in zip(pieces, attributions):
        if words and word is not None and word == last[0] and i == last[1] + 1:
            words[-1].token += piece.removeprefix("##")
            words[-1].end, words[-1].contribution = end, words[-1].contribution + attribution
        else:
            words.append(Word(piece, start, end, attribution))
        last = (word, i)
    return words


def explainer_for(core, encoder, signature: Signature, steps: int | None = None):
    """The explainer of a core's version: `explainer(text) -> Explanation`."""
    if signature.architecture == TRANSFORMER:
        return IntegratedGradientsExplainer(core, encoder, steps or STEPS)
    return NbsvmExplainer(core, encoder)


# ---- `make explain TEXT="..."`: one text's explanation in the terminal


def render(text: str, answer: dict, top: int = 8, color: bool = True) -> str:
    """An explanation answer as terminal text: the verdict, the review with each word shaded by its
    contribution (green for positive, red for negative; ANSI 24-bit colour), and the words ranked."""
    tokens = answer["tokens"]
    lines = [f"{answer['label']} (probability {answer['probability']:.4f}, model v{answer['model_version']}, {answer['method']}): "
             f"logit {answer['logit']:+.4f} = base {answer['base']:+.4f} + words {answer['logit'] - answer['base']:+.4f} "
             f"(completeness error {answer['completeness_error']:.1e})"]
    if color:
        strongest = max((abs(t["contribution"]) for t in tokens), default=0.0) or 1.0
        shaded, at = [], 0
        for token in tokens:
            if token["start"] < at:  # tokens from one character (an ellipsis is three ".") share its span
                continue
            share = min(1.0, abs(token["contribution"]) / strongest)
            fade = round(255 * (1 - 0.8 * share))
            rgb = (fade, 255, fade) if token["contribution"] > 0 else (255, fade, fade)
            shaded += [text[at : token["start"]], "\x1b[30;48;2;%d;%d;%dm" % rgb, text[token["start"] : token["end"]], "\x1b[0m"]
            at = token["end"]
        lines += ["", "".join(shaded) + text[at:], ""]
    ranked = sorted(tokens, key=lambda t: -abs(t["contribution"]))[:top]
    lines += [f"{t['contribution']:+9.4f}  {t['token']!r} at {t['start']}:{t['end']}" for t in ranked]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse
    import os
    import sys
    from pathlib import Path

    from sentiment.serving.core import predict_proba
    from sentiment.serving.payload import labelled
    from sentiment.serving.signature import load_encoder

    parser = argparse.ArgumentParser(description="Which words made the prediction: one text, in the terminal.")
    parser.add_argument("text")
    parser.add_argument("--artifact", type=Path, default=Path(__file__).resolve().parents[2] / "build" / "v1" / "export")
    parser.add_argument("--endpoint", help="ask a running TorchServe instead, e.g. http://127.0.0.1:8080/explanations/sentiment")
    parser.add_argument("--top", type=int, default=8, help="words listed, by |contribution|")
    args = parser.parse_args(argv)
    if args.endpoint:
        import requests

        response = requests.post(args.endpoint, json={"text": args.text}, timeout=60)
        if response.status_code != 200:
            raise SystemExit(f"{args.endpoint} answered {response.status_code}: {response.text}")
        answer = response.json()
    else:
        signature = Signature.load(args.artifact)
        encoder = load_encoder(args.artifact, signature)
        core = torch.jit.load(str(args.artifact / signature.model_file)).eval()
        (probability,), (label,) = labelled(predict_proba(core, [args.text], encoder).tolist(), signature, encoder.lengths([args.text]))
        answer = {"label": label, "probability": probability, "model_version": signature.version,
                  **explainer_for(core, encoder, signature)(args.text).as_dict()}
    print(render(args.text, answer, args.top, color=sys.stdout.isatty() and not os.environ.get("NO_COLOR")))


if __name__ == "__main__":
    main()
