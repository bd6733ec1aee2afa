"""The paper's 1-layer transformer (read at '=' only) and an MLP baseline.

Transformer (Nanda et al. 2023, as used by Varma et al. 2023): d_model 128, 4 heads of d_head 32,
d_mlp 512, ReLU MLP with biases, attention without biases, causal, scores / sqrt(d_head), learned
positional embedding, untied embed/unembed, no LayerNorm, no unembed bias. Init: every matrix
~ N(0, 1)/sqrt(d_model), W_U ~ N(0, 1)/sqrt(vocab), MLP biases 0.

The unembedding has `vocab` outputs, not vocab + 1: the '=' token is never a correct answer. For
P = 113 the model has 226,688 parameters, Nanda's 226,816 minus the 128 weights of that output.

Only the logits at '=' (position 2) are ever read, and with one layer they depend on the other
positions only through what '=' attends to. So the forward pass is the exact last-position
shortcut: the query is one vector (token '=' at position 2 is the same in every example), and the
attention score and the value-output (OV) vector of a token at position 0 or 1 are lookup tables
computed once per forward from the parameters. Per example we gather two table rows, softmax over
three positions, and run the MLP and unembedding at one position. Autograd flows through the
tables; tests/engine/reference_model.py checks logits and gradients against all-positions attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.spec import MlpSpec, RunSpec, TransformerSpec

N_CTX = 3  # [a, b, '=']

# Which norm group each parameter belongs to (component_norms).
NORM_GROUPS = {
    "W_E": "embed",
    "W_pos": "embed",
    "W_Q": "attn",
    "W_K": "attn",
    "W_V": "attn",
    "W_O": "attn",
    "W_in": "mlp",
    "b_in": "mlp",
    "W_out": "mlp",
    "b_out": "mlp",
    "W_U": "unembed",
}


def _normal(g: torch.Generator, *shape: int, scale: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape, generator=g) * scale)


class Transformer(nn.Module):
    def __init__(self, spec: TransformerSpec, vocab: int, g: torch.Generator):
        super().__init__()
        d, h, k, m = spec.d_model, spec.n_heads, spec.d_head, spec.d_mlp
        s = 1 / math.sqrt(d)
        self.eq_token = vocab
        self.d_head = k
        self.W_E = _normal(g, vocab + 1, d, scale=s)
        self.W_pos = _normal(g, N_CTX, d, scale=s)
        self.W_Q = _normal(g, h, d, k, scale=s)
        self.W_K = _normal(g, h, d, k, scale=s)
        self.W_V = _normal(g, h, d, k, scale=s)
        self.W_O = _normal(g, h, k, d, scale=s)
        self.W_in = _normal(g, d, m, scale=s)
        self.b_in = nn.Parameter(torch.zeros(m))
        self.W_out = _normal(g, m, d, scale=s)
        self.b_out = nn.Parameter(torch.zeros(d))
        self.W_U = _normal(g, d, vocab, scale=1 / math.sqrt(vocab))

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, 3) = [a, b, '=']; returns the logits at '=' (B, vocab). Column 2 is not read."""
        a, b = tokens[:, 0], tokens[:, 1]
        x_eq = self.W_E[self.eq_token] + self.W_pos[2]  # (d,) residual at '=' before attention
        q = torch.einsum("d,hdk->hk", x_eq, self.W_Q)  # (H, k), the same for every example
        # score(x) = (x W_K[h]) . q[h] / sqrt(k) = x . key_dir[:, h]: one direction per head
        key_dir = torch.einsum("hdk,hk->dh", self.W_K, q) / math.sqrt(self.d_head)  # (d, H)

        x_ab = self.W_E.unsqueeze(0) + self.W_pos[:2, None]  # (2, V+1, d) every token at pos 0, 1
        score_table = x_ab @ key_dir  # (2, V+1, H)
        ov_table = torch.einsum("pvd,hdk,hke->pvhe", x_ab, self.W_V, self.W_O)  # (2, V+1, H, d)
        score_eq = x_eq @ key_dir  # (H,)
        ov_eq = torch.einsum("d,hdk,hke->he", x_eq, self.W_V, self.W_O)  # (H, d)

        # F.embedding, not table[a]: its backward sums repeated rows in a fixed order, while
        # indexing's backward accumulates with threads racing and is not reproducible on CPU
        scores = torch.stack(
            [F.embedding(a, score_table[0]), F.embedding(b, score_table[1]), score_eq.expand(len(a), -1)],
            dim=-1,
        )  # (B, H, 3)
        attn = scores.softmax(dim=-1)
        ov_a = F.embedding(a, ov_table[0].flatten(1)).view(len(a), *ov_eq.shape)  # (B, H, d)
        ov_b = F.embedding(b, ov_table[1].flatten(1)).view(len(b), *ov_eq.shape)
        # broadcast-and-sum, not einsum: einsum lowers to a bmm of B tiny products, slow on CPU
        mixed = (
            (attn[..., 0, None] * ov_a).sum(dim=1)
            + (attn[..., 1, None] * ov_b).sum(dim=1)
            + attn[..., 2] @ ov_eq
        )  # (B, d)
        resid = x_eq + mixed  # (B, d)
        resid = resid + F.relu(resid @ self.W_in + self.b_in) @ self.W_out + self.b_out
        return resid @ self.W_U  # (B, vocab)


class Mlp(nn.Module):
    """Concatenated embeddings of a and b -> one ReLU hidden layer -> logits; fan-in scaled init."""

    def __init__(self, spec: MlpSpec, vocab: int, g: torch.Generator):
        super().__init__()
        e, m = spec.d_embed, spec.d_hidden
        self.W_E = _normal(g, vocab, e, scale=1 / math.sqrt(e))
        self.W_in = _normal(g, 2 * e, m, scale=1 / math.sqrt(2 * e))
        self.b_in = nn.Parameter(torch.zeros(m))
        self.W_U = _normal(g, m, vocab, scale=1 / math.sqrt(m))

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, 3) = [a, b, '=']; returns logits (B, vocab)."""
        x = F.embedding(tokens[:, :2], self.W_E).flatten(1)  # (B, 2e); reproducible backward
        return F.relu(x @ self.W_in + self.b_in) @ self.W_U


def build_model(spec: RunSpec) -> nn.Module:
    """The model of a spec on the CPU, initialised from spec.seed alone (not the global RNG)."""
    g = torch.Generator().manual_seed(spec.seed)
    vocab = spec.task.vocab_size
    if isinstance(spec.model, TransformerSpec):
        return Transformer(spec.model, vocab, g)
    if isinstance(spec.model, MlpSpec):
        return Mlp(spec.model, vocab, g)
    raise ValueError(f"model: build_model does not build '{spec.model.kind}' models")


def component_norms(model: nn.Module) -> dict[str, Tensor]:
    """L2 norms (0-dim tensors, no host sync) of embed, attn, mlp, unembed and the total."""
    squares = {group: model.W_U.new_zeros(()) for group in ("embed", "attn", "mlp", "unembed")}
    for name, param in model.named_parameters():
        squares[NORM_GROUPS[name]] = squares[NORM_GROUPS[name]] + param.detach().square().sum()
    norms = {group: sq.sqrt() for group, sq in squares.items()}
    norms["total"] = sum(squares.values()).sqrt()
    return norms
