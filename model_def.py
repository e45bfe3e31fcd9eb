"""The classifier: a bag of word n-grams, each scaled by its naive-Bayes log-count ratio, summed to one logit.

This is NBSVM (Wang & Manning, 2012) written as an `nn.EmbeddingBag`: the fixed per-feature scale
comes from training-set counts, the per-feature weight and the bias are learned. There is nothing
training-only in it (no dropout), so the same module is scripted and served as it is.
"""

from dataclasses import dataclass

import torch
from torch import nn

from text import Encoder


@dataclass
class ModelConfig:
    vocab_size: int


class SentimentClassifier(nn.Module):
    def __init__(self, config: ModelConfig, feature_scale: torch.Tensor | None = None):
        super().__init__()
        self.weight = nn.EmbeddingBag(config.vocab_size, 1, mode="sum")
        nn.init.zeros_(self.weight.weight)
        self.bias = nn.Parameter(torch.zeros(1))
        scale = torch.ones(config.vocab_size) if feature_scale is None else feature_scale.float()
        self.register_buffer("feature_scale", scale)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """ids: int64 [n_features] (all texts, flat); offsets: int64 [batch] start of each text. Returns logits [batch]."""
        summed = self.weight(ids, offsets, per_sample_weights=self.feature_scale[ids])
        return summed.squeeze(1) + self.bias


def to_tensors(ids: list[int], offsets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def predict_proba(core, texts: list[str], encoder: Encoder) -> torch.Tensor:
    """Texts -> P(positive) through any core (eager, TorchScript): encode as in training, forward, sigmoid."""
    if not texts:
        return torch.empty(0)
    with torch.inference_mode():
        return torch.sigmoid(core(*to_tensors(*encoder.batch(texts))))


def naive_bayes_scale(bags: list[list[int]], labels: list[int], vocab_size: int, alpha: float = 1.0) -> torch.Tensor:
    """log(p(feature|positive) / p(feature|negative)) from presence counts, smoothed by `alpha`."""
    counts = torch.full((2, vocab_size), alpha, dtype=torch.float64)
    for bag, label in zip(bags, labels):
        counts[label, torch.tensor(sorted(set(bag)), dtype=torch.long)] += 1
    probs = counts / counts.sum(dim=1, keepdim=True)
    return torch.log(probs[1] / probs[0]).float()
