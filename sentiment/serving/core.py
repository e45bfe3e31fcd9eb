"""The two classifiers, each texts' tensors -> one logit per text.

v1, `SentimentClassifier`: a bag of word and character n-grams, each scaled by its naive-Bayes
log-count ratio, summed to one logit. This is NBSVM (Wang & Manning, 2012) written as an
`nn.EmbeddingBag`: the fixed per-feature scale comes from training-set counts, the per-feature
weight and the bias are learned. Nothing in it is training-only, so it is scripted as it is.

v2, `TransformerClassifier`: a BERT encoder (all-MiniLM-L6-v2's weights: 6 layers, hidden 384),
mean pooling over the real tokens, and a linear head. Written here in plain torch so that a
worker needs only torch and tokenizers, and so TorchScript and ONNX export it as it is.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sentiment.serving.text import to_tensors  # noqa: F401  (training and tests build v1 inputs with it from here)


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


def predict_proba(core, texts: list[str], encoder) -> torch.Tensor:
    """Texts -> P(positive) through any core (eager, TorchScript, ONNX) of either version: featurise as in
    training (`encoder.chunks`: text.Encoder for v1, text.WordPieceEncoder for v2), forward, sigmoid."""
    with torch.inference_mode():
        probabilities = torch.empty(len(texts))
        for positions, inputs in encoder.chunks(texts):  # each featuriser splits a batch into forward passes its own way
            probabilities[positions] = torch.sigmoid(core(*inputs))
    return probabilities


def naive_bayes_scale(counts, labels: list[int], alpha: float = 1.0) -> torch.Tensor:
    """log(p(feature|positive) / p(feature|negative)) from presence counts, smoothed by `alpha`.
    `counts`: a scipy sparse matrix, texts x features, of feature counts (train.bag_matrix)."""
    present = (counts > 0).astype(np.float64)
    y = np.asarray(labels)
    per_class = np.vstack([np.asarray(present[y == label].sum(axis=0)).ravel() for label in (0, 1)]) + alpha
    probs = per_class / per_class.sum(axis=1, keepdims=True)
    return torch.from_numpy(np.log(probs[1] / probs[0])).float()


@dataclass
class TransformerConfig:
    """BERT hyper-parameters; the defaults are all-MiniLM-L6-v2's config.json."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1  # while fine-tuning; an eval-mode export has none


class EncoderLayer(nn.Module):
    """One post-norm BERT layer: self-attention, then a GELU feed-forward, each with a residual and LayerNorm."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.heads = config.heads
        self.query = nn.Linear(config.hidden, config.hidden)
        self.key = nn.Linear(config.hidden, config.hidden)
        self.value = nn.Linear(config.hidden, config.hidden)
        self.attention_out = nn.Linear(config.hidden, config.hidden)
        self.attention_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(config.hidden, config.intermediate)
        self.output = nn.Linear(config.intermediate, config.hidden)
        self.output_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.attention_dropout = config.dropout

    def forward(self, x: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        heads = (batch, length, self.heads, hidden // self.heads)
        q = self.query(x).view(heads).transpose(1, 2)
        k = self.key(x).view(heads).transpose(1, 2)
        v = self.value(x).view(heads).transpose(1, 2)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attention_bias, dropout_p=self.attention_dropout if self.training else 0.0)
        attended = attended.transpose(1, 2).reshape(batch, length, hidden)
        x = self.attention_norm(x + self.dropout(self.attention_out(attended)))
        return self.output_norm(x + self.dropout(self.output(F.gelu(self.intermediate(x)))))


class TransformerClassifier(nn.Module):
    """BERT encoder -> mean of the real tokens' last hidden states -> linear head -> one logit."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden)
        self.position_embeddings = nn.Embedding(config.max_positions, config.hidden)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden)
        self.embedding_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([EncoderLayer(config) for _ in range(config.layers)])
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, 1)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token + position + segment-0 embeddings, normalised: the encoder's input."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.dropout(self.embedding_norm(x))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: int64 [batch, length] (mask 1 for real tokens, 0 for padding). Returns logits [batch]."""
        return self.classify(self.embed(input_ids), attention_mask)

    def classify(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The encoder and head from given input embeddings (explanations differentiate with respect to them)."""
        mask = attention_mask.to(embeddings.dtype)
        attention_bias = ((1.0 - mask) * -1e9)[:, None, None, :]  # padding gets no attention
        x = embeddings
        for layer in self.layers:
            x = layer(x, attention_bias)
        pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        return self.head(self.dropout(pooled)).squeeze(1)


# Pretrained BERT parameter names (Hugging Face layout, as in model.safetensors) -> ours.
_BERT_NAMES = {
    "embeddings.word_embeddings.": "word_embeddings.",
    "embeddings.position_embeddings.": "position_embeddings.",
    "embeddings.token_type_embeddings.": "token_type_embeddings.",
    "embeddings.LayerNorm.": "embedding_norm.",
    "attention.self.query.": "query.",
    "attention.self.key.": "key.",
    "attention.self.value.": "value.",
    "attention.output.dense.": "attention_out.",
    "attention.output.LayerNorm.": "attention_norm.",
    "intermediate.dense.": "intermediate.",
    "output.dense.": "output.",
    "output.LayerNorm.": "output_norm.",
    "encoder.layer.": "layers.",
}


def load_pretrained_encoder(model: TransformerClassifier, weights: dict[str, torch.Tensor]) -> None:
    """Copy a pretrained BertModel's encoder weights into `model` (the head stays freshly initialised).
    Every encoder parameter must be found: a partial load would fine-tune from noise without a word."""
    renamed = {}
    for name, tensor in weights.items():
        if name.startswith(("pooler.", "embeddings.position_ids")):
            continue  # BERT's next-sentence pooler is unused; position ids are recomputed
        for old, new in _BERT_NAMES.items():
            name = name.replace(old, new)
        renamed[name] = tensor
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    if unexpected or set(missing) != {"head.weight", "head.bias"}:
        raise ValueError(f"pretrained weights do not fit the encoder: missing {missing}, unexpected {unexpected}")
