"""TorchServe's entry point (`--handler handler.py`): the served function is sentiment/serving/handler.py,
which the archive ships with the rest of the sentiment.serving package (docs/layout.md)."""

from sentiment.serving import handler


class SentimentHandler(handler.SentimentHandler):
    """TorchServe loads the handler class defined in this module: the served one, unchanged."""
