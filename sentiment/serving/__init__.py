"""The served function: what a TorchServe worker imports, and all that the archive ships (besides the
core and its JSON files). Nothing here imports training, ops, bench, scripts or tests."""
