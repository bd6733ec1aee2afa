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
attention score and the value vector of a token at position 0 or 1 are lookup tables computed
once per forward from the parameters. Per example we gather two table rows, softmax over three
positions, mix the values, and run W_O, the MLP and the unembedding at one position. Autograd
flows through the tables; benchmarks/reference_model.py checks logits and gradients against
all-positions attention.

The math lives in transformer_logits / mlp_logits, which take every parameter with a leading
member dimension K: an ensemble of K models is one batched computation (baddbmm, batched einsum,
one gather over all members' tables). The nn.Modules hold one model's parameters (its init and
checkpoint format) and run as an ensemble of one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

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
        return transformer_logits(_as_ensemble_of_one(self), tokens[None, :, 0], tokens[None, :, 1])[0]


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
        return mlp_logits(_as_ensemble_of_one(self), tokens[None, :, 0], tokens[None, :, 1])[0]


def _as_ensemble_of_one(model: nn.Module) -> dict[str, Tensor]:
    return {name: param[None] for name, param in model.named_parameters()}


def _gather_rows(tables: Tensor, rows: Tensor) -> Tensor:
    """tables (K, R, X), rows (K, ...) indices into each member's own table -> (K, ..., X).

    One F.embedding over the flattened tables, not indexing or gather: its backward sums repeated
    rows in a fixed order, while the others accumulate with threads racing (not reproducible on CPU).
    """
    k, r = tables.shape[:2]
    offset = torch.arange(k, device=rows.device).view(k, *[1] * (rows.dim() - 1)) * r
    return F.embedding(rows + offset, tables.flatten(0, 1))


def _attention_tables(p: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The residual at '=' before attention x_eq (K, d), the score (K, 2(V+1), H) and value
    (K, 2(V+1), H, d_head) of every token at position 0 (rows 0..V) and 1 (rows V+1..), and the
    score (K, H) and value (K, H, d_head) of '=' itself."""
    W_E, W_pos, W_Q, W_K, W_V = p["W_E"], p["W_pos"], p["W_Q"], p["W_K"], p["W_V"]
    v1, d_head = W_E.shape[1], W_Q.shape[-1]
    x_eq = W_E[:, v1 - 1] + W_pos[:, 2]  # (K, d) residual at '=' before attention; '=' is token V
    q = torch.einsum("md,mhdk->mhk", x_eq, W_Q)  # (K, H, k), the same for every example
    # score(x) = (x W_K[h]) . q[h] / sqrt(k) = x . key_dir[:, h]: one direction per head
    key_dir = torch.einsum("mhdk,mhk->mdh", W_K, q) / math.sqrt(d_head)  # (K, d, H)

    x_ab = (W_E[:, None] + W_pos[:, :2, None]).flatten(1, 2)  # (K, 2(V+1), d) every token at pos 0, 1
    score_table = x_ab @ key_dir  # (K, 2(V+1), H)
    value_table = torch.einsum("mvd,mhdk->mvhk", x_ab, W_V)  # (K, 2(V+1), H, k)
    score_eq = torch.einsum("md,mdh->mh", x_eq, key_dir)  # (K, H)
    value_eq = torch.einsum("md,mhdk->mhk", x_eq, W_V)  # (K, H, k)
    return x_eq, score_table, value_table, score_eq, value_eq


def transformer_logits(p: Mapping[str, Tensor], a: Tensor, b: Tensor) -> Tensor:
    """An ensemble of K transformers: p holds each parameter with a leading member dimension K,
    a and b (K, B) are member k's operands in row k. Returns the logits at '=' (K, B, vocab)."""
    x_eq, score_table, value_table, score_eq, value_eq = _attention_tables(p)
    v1, heads = p["W_E"].shape[1], p["W_Q"].shape[1]
    kk, batch = a.shape
    # Few, wide kernels and few large temporaries (a GPU step is launch- and memory-bound): a's and
    # b's rows (V+1+b: b at position 1) are gathered at once from all members' tables by F.embedding
    # and F.embedding_bag (their backwards sum repeated rows in a fixed order, unlike index or gather).
    offset = torch.arange(0, kk * score_table.shape[1], score_table.shape[1], device=a.device).view(kk, 1, 1)
    rows = torch.stack([a, b + v1], dim=-1) + offset  # (K, B, 2) rows of the flattened tables
    scores = torch.cat(
        [F.embedding(rows, score_table.flatten(0, 1)).transpose(2, 3), score_eq[:, None, :, None].expand(kk, batch, heads, 1)],
        dim=3,
    )  # (K, B, H, 3) for the positions a, b, '=': a softmax over the last dimension is the fast one
    attn = scores.softmax(dim=-1)  # (K, B, H, 3)
    # Each head's mix of its three values is one bag of F.embedding_bag over rows (token, head) of
    # all members' value tables, weighted by the attention: one kernel that writes only the mix
    # (K, B, H, d_head), and a backward that reads only its gradient, where gathering the values
    # and weighting them wrote and read 4-6x that (-45 MB a member-step at P=113, of 236).
    values = torch.cat([value_table.flatten(1, 2), value_eq], dim=1)  # (K, (2(V+1)+1) H, k)
    per_member = values.shape[1]
    tokens = torch.stack([a, b + v1, torch.full_like(a, 2 * v1)], dim=-1) * heads  # (K, B, 3): a, b, '='
    tokens += torch.arange(0, kk * per_member, per_member, device=a.device).view(kk, 1, 1)
    bags = tokens[:, :, None] + torch.arange(heads, device=a.device)[:, None]  # (K, B, H, 3)
    z = F.embedding_bag(bags.view(-1, 3), values.flatten(0, 1), per_sample_weights=attn.view(-1, 3), mode="sum")
    resid = torch.baddbmm(x_eq[:, None], z.view(kk, batch, -1), p["W_O"].flatten(1, 2))
    # In place: the pre-activation is not kept, one (K, B, d_mlp) buffer fewer (fresh ones are page faults on the CPU).
    hidden = torch.baddbmm(p["b_in"][:, None], resid, p["W_in"]).relu_()  # (K, B, d_mlp)
    # b_out reaches the logits only through W_U: added there as b_out W_U (K, vocab), one
    # (K, B, d) sum fewer.
    resid = torch.baddbmm(resid, hidden, p["W_out"])
    return torch.baddbmm(p["b_out"][:, None] @ p["W_U"], resid, p["W_U"])  # (K, B, vocab)


@torch.no_grad()
def transformer_pair_logits(p: Mapping[str, Tensor], a: Tensor, b: Tensor) -> Tensor:
    """transformer_logits (up to float rounding, without autograd) for operands a, b (K, N):
    through transformer_grid_logits when the pairs cover at least half the V x V grid (evaluation)."""
    v = p["W_E"].shape[1] - 1
    if 2 * a.shape[1] < v * v:
        return transformer_logits(p, a, b)
    return _gather_rows(transformer_grid_logits(p), a * v + b)  # (K, N, vocab)


@torch.no_grad()
def transformer_grid_logits(p: Mapping[str, Tensor]) -> Tensor:
    """transformer_logits (up to float rounding, without autograd) of every pair (a, b) of the
    V x V grid, in row-major order: (K, V * V, vocab).

    Over the grid, the attention weights of (a, b) come from a score table of a and one of b, and
    everything linear in the attention output is a weighted sum of per-token tables: the MLP's
    pre-activation is sum_h w0[h] (ov_a[h] W_in) + w1[h] (ov_b[h] W_in) + w2[h] (ov_eq[h] W_in)
    + x_eq W_in + b_in, the same for the unembedding of the residual stream. So no per-pair
    gathers, and per pair an H-term sum replaces the d_model x d_mlp matmul.
    """
    v1 = p["W_E"].shape[1]
    v = v1 - 1
    kk = p["W_E"].shape[0]
    x_eq, score_table, value_table, score_eq, value_eq = _attention_tables(p)
    W_O = p["W_O"]
    ov_table = torch.einsum("mvhk,mhke->mvhe", value_table, W_O)  # (K, 2(V+1), H, d) OV output per token
    ov_eq = torch.einsum("mhk,mhke->mhe", value_eq, W_O)  # (K, H, d)
    # Softmax over the three positions, written out over (K, V_a, V_b, H): stacking the scores and
    # calling softmax over a last dimension of 3 took ~9x as long (1.8 vs 0.2 ms at P=113).
    s_a, s_b, s_e = score_table[:, :v, None], score_table[:, None, v1 : v1 + v], score_eq[:, None, None]
    top = torch.maximum(torch.maximum(s_a, s_b), s_e)
    e_a, e_b, e_e = (s_a - top).exp(), (s_b - top).exp(), (s_e - top).exp()
    total = e_a + e_b + e_e
    # For each a, a's and '='s weights side by side with a 1 for the constant part; for each b,
    # b's weights laid out by b (a contiguous copy: ~20% faster than a matmul over the transposed view).
    weights_a = torch.cat([e_a / total, e_e / total, torch.ones_like(total[..., :1])], dim=-1)  # (K, V_a, V_b, 2H+1)
    weights_b = (e_b / total).transpose(1, 2).contiguous()  # (K, V_b, V_a, H)

    def linear_of_resid(W: Tensor, bias: Tensor | None) -> Tensor:
        """(x_eq + mixed) @ W (+ bias) over the grid, W (K, d, X) -> (K, V, V, X)."""
        # (K, V * H, d) @ (K, d, X), not (K, V, H, d) @ W[:, None]: broadcasting W over V copies it
        # V times for K > 1 (~4x slower at K = 8 on a CPU) where one batched matmul needs no copy
        heads = ov_table.shape[2]
        ov_a = (ov_table[:, :v].flatten(1, 2) @ W).view(kk, v, heads, -1)  # (K, V, H, X)
        ov_b = (ov_table[:, v1 : v1 + v].flatten(1, 2) @ W).view(kk, v, heads, -1)
        ov_e = ov_eq @ W  # (K, H, X)
        base = (x_eq[:, None] @ W)[:, 0]  # (K, X)
        if bias is not None:
            base = base + bias
        # for each a: (V_b, 2H+1) @ (2H+1, X), then for each b: (V_a, H) @ (H, X)
        tables_a = torch.cat([ov_a, ov_e[:, None].expand_as(ov_a), base[:, None, None].expand(kk, v, 1, -1)], dim=2)
        out = weights_a @ tables_a
        out += (weights_b @ ov_b).transpose(1, 2)
        return out

    hidden = linear_of_resid(p["W_in"], p["b_in"]).relu_().flatten(1, 2)  # (K, V*V, d_mlp)
    out_u = p["W_out"] @ p["W_U"]  # (K, d_mlp, vocab): the MLP output goes only to the unembedding
    return torch.baddbmm(linear_of_resid(p["W_U"], (p["b_out"][:, None] @ p["W_U"])[:, 0]).flatten(1, 2), hidden, out_u)


def mlp_logits(p: Mapping[str, Tensor], a: Tensor, b: Tensor) -> Tensor:
    """An ensemble of K MLPs (parameters with a leading K), a and b (K, B) -> logits (K, B, vocab)."""
    x = _gather_rows(p["W_E"], torch.stack([a, b], dim=-1)).flatten(2)  # (K, B, 2e)
    return F.relu(torch.baddbmm(p["b_in"][:, None], x, p["W_in"])) @ p["W_U"]


def build_model(spec: RunSpec) -> nn.Module:
    """The model of a spec on the CPU, initialised from spec.seed alone (not the global RNG)."""
    model = _default_init(spec)
    scale = spec.model.init_scale  # type: ignore[union-attr]
    if scale != 1:  # Omnigrok's initialisation scale alpha (Liu et al. 2023)
        with torch.no_grad():
            for param in model.parameters():
                param.mul_(scale)
    return model


def _default_init(spec: RunSpec) -> nn.Module:
    g = torch.Generator().manual_seed(spec.seed)
    vocab = spec.task.vocab_size
    if isinstance(spec.model, TransformerSpec):
        return Transformer(spec.model, vocab, g)
    if isinstance(spec.model, MlpSpec):
        return Mlp(spec.model, vocab, g)
    raise ValueError(f"model: build_model does not build '{spec.model.kind}' models")


def component_norms(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """L2 norms of embed, attn, mlp, unembed and the total, each (K,) for parameters with a leading
    member dimension K; tensors on the parameters' device (no host sync)."""
    first = next(iter(params.values()))
    squares = {group: first.new_zeros(first.shape[0]) for group in ("embed", "attn", "mlp", "unembed")}
    for name, param in params.items():
        squares[NORM_GROUPS[name]] = squares[NORM_GROUPS[name]] + param.detach().square().flatten(1).sum(dim=1)
    norms = {group: sq.sqrt() for group, sq in squares.items()}
    norms["total"] = sum(squares.values()).sqrt()
    return norms
