"""The costliest admissible inputs: what export.py measures a text's cost on (Signature.seconds_per_text),
and what the tests send through a real server to show that no admissible request or batch outruns
the response timeout or the response size limit.

Measured on v1 (one thread, 64 texts of 10,000 characters): words of random CJK ideographs 19 ms a
text, random accented Latin words 18, random ASCII words 14, a real review 5, "!" x 10,000 7. Words
that differ defeat the featuriser's per-word cache, and each ideograph is a letter (\\w) of its own
n-grams. v2 reads at most max_length tokens whatever the text, and such words give it that many.
"""

import random

from signature import Signature

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
