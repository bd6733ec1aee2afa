"""A textbook all-positions forward of engine.model.Transformer, to check the shortcut against."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.model import Transformer


def reference_forward(model: Transformer, tokens: Tensor) -> Tensor:
    """Causal attention and MLP at every position with the model's own parameters; logits at '='."""
    x = model.W_E[tokens] + model.W_pos  # (B, 3, d)
    q = torch.einsum("bpd,hdk->bhpk", x, model.W_Q)
    k = torch.einsum("bpd,hdk->bhpk", x, model.W_K)
    v = torch.einsum("bpd,hdk->bhpk", x, model.W_V)
    scores = q @ k.transpose(-1, -2) / math.sqrt(model.d_head)  # (B, H, 3, 3)
    n = tokens.shape[1]
    future = torch.triu(torch.ones(n, n, dtype=torch.bool, device=tokens.device), diagonal=1)
    attn = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    z = attn @ v  # (B, H, 3, k)
    x = x + torch.einsum("bhpk,hkd->bpd", z, model.W_O)
    x = x + F.relu(x @ model.W_in + model.b_in) @ model.W_out + model.b_out
    return (x @ model.W_U)[:, -1]  # (B, vocab)
