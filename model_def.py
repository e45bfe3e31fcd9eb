"""The model definitions, where users look for them: they live in sentiment/serving/core.py (the served
core: v1 NBSVM and v2 transformer, each texts' tensors -> one logit per text)."""

from sentiment.serving.core import ModelConfig, SentimentClassifier, TransformerClassifier, TransformerConfig, predict_proba  # noqa: F401
