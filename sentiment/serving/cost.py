"""The costliest admissible inputs and what they cost: each worker measures, at start and on its own host,
the seconds of the costliest text (`measure_cost`), and the handler admits a batch's requests by that
estimate (`Cost.seconds`); the tests send these inputs through a real server to show that no admissible
request or batch outruns the response timeout or the response size limit.

Measured on v1 (one thread, 64 texts of 10,000 characters): words of random CJK ideographs 19 ms a
text, random accented Latin words 18, random ASCII words 14, a real review 5, "!" x 10,000 7. Words
that differ defeat the featuriser's per-word cache, and each ideograph is a letter (\\w) of its own
n-grams. v2 reads at most max_length tokens whatever the text, and such words give it that many.
"""

import random
import time
from dataclasses import dataclass

from sentiment.serving.signature import Signature
from sentiment.serving.text import normalized_length_bound

CJK = [chr(c) for c in range(0x4E00, 0x9FA6)]
ACCENTED = list("áéíóúàèìòùâêîôûäëïöüñçåøæ")


def costliest_text(signature: Signature, rng: random.Random) -> str:
    """max_chars characters of random 2-6 letter words, ideographs and accented letters: the worst
    featurisation cost per character found (module docstring), and max_length tokens for v2."""
    words, length = [], -1
    while length < signature.max_chars:
        word = "".join(rng.choices(CJK if rng.random() < 0.5 else ACCENTED, k=rng.randint(2, 6)))
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[: signature.max_chars].strip()


def costliest_texts(signature: Signature, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [costliest_text(signature, rng) for _ in range(n)]


def largest_explanation_text(signature: Signature) -> str:
    """The text whose explanation answer is the largest per character: one token per character, each
    written as a 6-byte JSON escape (a control character; it is not whitespace, so each is a token)."""
    return "\x01" * min(signature.max_chars, signature.max_explain_chars)


# A measurement repeats until its timed runs add up to this: three periods of the kernel's CPU bandwidth
# control (cgroup cpu.max / cfs_period_us, 100 ms), so that a CPU quota shows in it and not only bursts
# within one period's quota. v1's worker start grows by about twice this; v2's by one explanation pass
# (explain.IntegratedGradientsExplainer.probe: ~2.5 s on one core of this machine, ~5 s on half of one).
MEASURE_SECONDS = 0.3
WARM_UP = "a fine film"  # TorchScript optimises on its first calls: one short untimed call each first


@dataclass
class Cost:
    """Seconds of the costliest admissible text on this worker's host, one thread, as measured at its start."""

    prediction: float  # its share of a forward pass
    explanation: float  # its explanation, on top of the prediction (v2: an upper bound, sentiment/serving/explain.py's probe)

    def seconds(self, signature: Signature, texts: list[str], explain: bool) -> float:
        """An upper bound on a request's work: each text its share of the costliest one, by the length the
        model reads (normalised: text.normalized_length_bound) up to all of it from full_cost_chars on."""
        per_text = self.prediction + (self.explanation if explain else 0.0)
        return per_text * sum(min(1.0, normalized_length_bound(text) / signature.full_cost_chars) for text in texts)


def measure_cost(forward, explainer, signature: Signature, seed: int = 0) -> Cost:
    """`forward(texts)` and `explainer` timed on costliest texts: the mean of runs over MEASURE_SECONDS.
    Fresh texts every run, because the featuriser caches words."""
    rng = random.Random(seed)
    forward([WARM_UP])
    prediction = _mean_seconds(lambda: costliest_texts(signature, 2, rng.randrange(1 << 30)), forward) / 2
    probe, times = explainer.probe()
    probe(WARM_UP)
    explanation = _mean_seconds(lambda: costliest_text(signature, rng), probe) * times
    return Cost(prediction, explanation)


def _mean_seconds(make, run) -> float:
    spent, runs = 0.0, 0
    while spent < MEASURE_SECONDS:
        inputs = make()
        started = time.perf_counter()
        run(inputs)
        spent, runs = spent + time.perf_counter() - started, runs + 1
    return spent / runs
