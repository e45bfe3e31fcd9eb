"""Test-only TorchServe handler: the shipped SentimentHandler with faults injected on demand.

Packed into a separate archive by tests/test_reliability.py (handler.py and its modules go in as
extra files). A text containing RAISE_MARKER makes the forward pass raise; one containing
SLEEP_MARKER makes it hang for SLEEP_SECONDS (longer than the archive's responseTimeout), as a
stuck model would; one containing EXIT_MARKER ends the worker process, as a crash in native code
would (TorchServe starts another). Every other text is scored as usual.

TorchServe requires the handler module to define exactly one class: the base class is reached
through its module (`handler.SentimentHandler`), so it is not a second class of this module.
"""

import logging
import os
import time

from sentiment.serving import handler

log = logging.getLogger(__name__)

RAISE_MARKER = "__raise_in_inference__"
SLEEP_MARKER = "__sleep_in_inference__"
EXIT_MARKER = "__exit_in_inference__"
SLEEP_SECONDS = 60


class FaultInjectingHandler(handler.SentimentHandler):
    def forward(self, texts: list[str]) -> list[float]:
        if poisoned := sum(RAISE_MARKER in text for text in texts):
            log.info("injected fault: a pass over %d texts, %d poisoned", len(texts), poisoned)  # tests read what each pass held
            raise RuntimeError("injected fault: " + RAISE_MARKER)
        if any(SLEEP_MARKER in text for text in texts):
            time.sleep(SLEEP_SECONDS)
        if any(EXIT_MARKER in text for text in texts):
            os._exit(1)
        return super().forward(texts)
