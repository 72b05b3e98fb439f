"""Built-in models. `input_shape` and `num_classes` (the Transformer's `vocab_size` and `block_size`)
come from the data (see build.build_model)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, input_shape, num_classes: int, hidden=(256, 256), dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """Same-padded 3x3 convolutions, one 2x2 max-pool, dropout, a linear classifier."""

    def __init__(self, input_shape, num_classes: int, channels=(16, 32), dropout: float = 0.25):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"CNN needs image input [C, H, W], the data gives {list(input_shape)}")
        c, h, w = input_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
            c = out
        layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(dropout)]
        layers.append(nn.Linear(c * (h // 2) * (w // 2), num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Transformer(nn.Module):
    """A small decoder-only Transformer: token and learned position embeddings, `n_layer`
    pre-norm blocks (causal self-attention, then a 4x GELU MLP, each added to the residual
    stream), a final LayerNorm and a linear head to the vocabulary.

    forward(idx [B, T] token ids, T <= block_size) -> logits [B, T, vocab_size]; position t sees
    tokens 0..t only. With `tie_weights` the head shares the token embedding's matrix.
    """

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int,
        n_head: int,
        n_embd: int,
        dropout: float,
        tie_weights: bool,
    ):
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
        self.block_size = block_size
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.norm = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.token_embedding.weight
        self.apply(_init_weights)
        # Each block adds two projections to the residual stream: scaled down, so that its
        # variance at the start does not grow with the depth (GPT-2's initialization).
        for block in self.blocks:
            for projection in (block.attention.projection, block.mlp[2]):
                nn.init.normal_(projection.weight, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx):
        t = idx.shape[1]
        if t > self.block_size:
            raise ValueError(f"a sequence of {t} tokens is longer than block_size {self.block_size}")
        positions = torch.arange(t, device=idx.device)
        h = self.dropout(self.token_embedding(idx) + self.position_embedding(positions))
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(n_embd)
        self.attention = CausalSelfAttention(n_embd, n_head, dropout)
        self.mlp_norm = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(dropout)
        )

    def forward(self, h):
        h = h + self.attention(self.attention_norm(h))
        return h + self.mlp(self.mlp_norm(h))


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head, self.attention_dropout = n_head, dropout
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.projection = nn.Linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h):
        b, t, c = h.shape
        # [B, T, 3C] -> three [B, heads, T, C / heads]
        q, k, v = self.qkv(h).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        p = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.dropout(self.projection(out.transpose(1, 2).reshape(b, t, c)))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
