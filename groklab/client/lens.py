"""TransformerLens interop for the engine's transformer (engine.model.Transformer).

- TransformerLensView: a transformer_lens HookedRootModule that computes the same model over all
  three positions (full causal attention, not the engine's last-position shortcut) with
  TransformerLens's hook names and activation shapes, so run_with_cache, run_with_hooks and
  activation patching work on it. Its parameters have HookedTransformer's names and shapes.
- hooked_transformer_state_dict / hooked_transformer_config: the weights in the state-dict layout
  of TransformerLens 2.x/3.x's HookedTransformer, and the HookedTransformerConfig kwargs to match:
  HookedTransformer(HookedTransformerConfig(**config)).load_state_dict(state_dict).

transformer_lens is imported only when the view is first used: the export needs torch alone, so a
notebook on TransformerLens 2.x (which cannot install 4.x beside it) can use it, and importing
groklab.client or this module costs nothing (importing transformer_lens 4.3 takes seconds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from transformer_lens import HookedRootModule

# The hook points of the view, in the order the forward pass reaches them.
HOOK_NAMES = (
    "hook_embed",
    "hook_pos_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.attn.hook_q",
    "blocks.0.attn.hook_k",
    "blocks.0.attn.hook_v",
    "blocks.0.attn.hook_attn_scores",
    "blocks.0.attn.hook_pattern",
    "blocks.0.attn.hook_z",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_resid_mid",
    "blocks.0.mlp.hook_pre",
    "blocks.0.mlp.hook_post",
    "blocks.0.hook_mlp_out",
    "blocks.0.hook_resid_post",
)

# HookedTransformer's state-dict key of each engine parameter (the shapes are the same).
HOOKED_TRANSFORMER_NAMES = {
    "W_E": "embed.W_E",
    "W_pos": "pos_embed.W_pos",
    "W_Q": "blocks.0.attn.W_Q",
    "W_K": "blocks.0.attn.W_K",
    "W_V": "blocks.0.attn.W_V",
    "W_O": "blocks.0.attn.W_O",
    "W_in": "blocks.0.mlp.W_in",
    "b_in": "blocks.0.mlp.b_in",
    "W_out": "blocks.0.mlp.W_out",
    "b_out": "blocks.0.mlp.b_out",
    "W_U": "unembed.W_U",
}


class HookedTransformerWeights(NamedTuple):
    """A run's weights for TransformerLens 2.x/3.x; unpacks as `state_dict, config = ...`.

    HookedTransformer(HookedTransformerConfig(**config)).load_state_dict(state_dict)
    """

    state_dict: dict[str, Tensor]
    config: dict[str, Any]


def _engine_params(model_or_params: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The engine parameters (W_E, ..., W_U) of one transformer, from the module or its checkpoint."""
    if isinstance(model_or_params, nn.Module):
        params = dict(model_or_params.named_parameters())
    else:
        params = dict(model_or_params)
    missing = set(HOOKED_TRANSFORMER_NAMES) - set(params)
    if missing:
        raise ValueError(f"model: only transformer runs have a TransformerLens view; these weights lack {sorted(missing)}")
    if params["W_E"].dim() != 2:
        raise ValueError(f"model: one transformer's weights, not an ensemble (W_E is {tuple(params['W_E'].shape)})")
    return {name: params[name].detach() for name in HOOKED_TRANSFORMER_NAMES}


def hooked_transformer_config(model_or_params: nn.Module | Mapping[str, Tensor]) -> dict[str, Any]:
    """The HookedTransformerConfig kwargs of the transformer: Nanda's grokking demo config with this
    model's sizes (d_vocab counts the '=' token, d_vocab_out does not)."""
    p = _engine_params(model_or_params)
    n_heads, d_model, d_head = p["W_Q"].shape
    return {
        "n_layers": 1,
        "d_model": d_model,
        "n_heads": n_heads,
        "d_head": d_head,
        "d_mlp": p["W_in"].shape[1],
        "d_vocab": p["W_E"].shape[0],
        "d_vocab_out": p["W_U"].shape[1],
        "n_ctx": p["W_pos"].shape[0],
        "act_fn": "relu",
        "normalization_type": None,
        "attn_only": False,
    }


def hooked_transformer_state_dict(model_or_params: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The weights as TransformerLens 2.x/3.x HookedTransformer.state_dict() holds them (same keys,
    order, shapes and dtypes; CPU copies): zeros for the biases the engine does not have (b_Q, b_K,
    b_V, b_O, b_U), and the attention's two buffers, the causal mask (n_ctx, n_ctx) bool and
    IGNORE = -inf."""
    p = {name: param.to("cpu", copy=True) for name, param in _engine_params(model_or_params).items()}
    n_heads, d_model, d_head = p["W_Q"].shape
    n_ctx, d_vocab_out = p["W_pos"].shape[0], p["W_U"].shape[1]

    def zeros(*shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=p["W_E"].dtype)

    return {
        "embed.W_E": p["W_E"],
        "pos_embed.W_pos": p["W_pos"],
        "blocks.0.attn.W_Q": p["W_Q"],
        "blocks.0.attn.W_O": p["W_O"],
        "blocks.0.attn.b_Q": zeros(n_heads, d_head),
        "blocks.0.attn.b_O": zeros(d_model),
        "blocks.0.attn.W_K": p["W_K"],
        "blocks.0.attn.W_V": p["W_V"],
        "blocks.0.attn.b_K": zeros(n_heads, d_head),
        "blocks.0.attn.b_V": zeros(n_heads, d_head),
        "blocks.0.attn.mask": torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril(),
        "blocks.0.attn.IGNORE": torch.tensor(-math.inf, dtype=p["W_E"].dtype),
        "blocks.0.mlp.W_in": p["W_in"],
        "blocks.0.mlp.b_in": p["b_in"],
        "blocks.0.mlp.W_out": p["W_out"],
        "blocks.0.mlp.b_out": p["b_out"],
        "unembed.W_U": p["W_U"],
        "unembed.b_U": zeros(d_vocab_out),
    }


def hooked_transformer_weights(model_or_params: nn.Module | Mapping[str, Tensor]) -> HookedTransformerWeights:
    return HookedTransformerWeights(hooked_transformer_state_dict(model_or_params), hooked_transformer_config(model_or_params))


def transformer_lens_view(model_or_params: nn.Module | Mapping[str, Tensor]) -> HookedRootModule:
    """The TransformerLensView of an engine transformer (or its checkpoint's weights), on the CPU,
    in eval mode; its weights are copies."""
    view = _view_class()(hooked_transformer_config(model_or_params))
    view.load_state_dict(hooked_transformer_state_dict(model_or_params))
    return view.eval()


# The components hold HookedTransformer's parameters under its names; they are plain nn.Modules
# (only the root must be a HookedRootModule), so only creating one needs transformer_lens.


def _hook_point() -> nn.Module:
    from transformer_lens.hook_points import HookPoint

    return HookPoint()


def _empty(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(*shape))


class _Embed(nn.Module):
    def __init__(self, d_vocab: int, d_model: int) -> None:
        super().__init__()
        self.W_E = _empty(d_vocab, d_model)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.W_E[tokens]  # (batch, pos, d_model)


class _PosEmbed(nn.Module):
    def __init__(self, n_ctx: int, d_model: int) -> None:
        super().__init__()
        self.W_pos = _empty(n_ctx, d_model)

    def forward(self, tokens: Tensor) -> Tensor:
        # A copy per example, as HookedTransformer's: a hook may write into it in place.
        return self.W_pos[: tokens.shape[1]].repeat(tokens.shape[0], 1, 1)  # (batch, pos, d_model)


class _Attention(nn.Module):
    """HookedTransformer's attention: causal, scores / sqrt(d_head), masked scores set to IGNORE."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        h, d, k, n_ctx = cfg["n_heads"], cfg["d_model"], cfg["d_head"], cfg["n_ctx"]
        self.W_Q, self.W_O = _empty(h, d, k), _empty(h, k, d)
        self.b_Q, self.b_O = _empty(h, k), _empty(d)
        self.W_K, self.W_V = _empty(h, d, k), _empty(h, d, k)
        self.b_K, self.b_V = _empty(h, k), _empty(h, k)
        self.register_buffer("mask", torch.ones(n_ctx, n_ctx, dtype=torch.bool).tril())
        self.register_buffer("IGNORE", torch.tensor(-math.inf))
        self.attn_scale = math.sqrt(k)
        self.hook_k = _hook_point()  # (batch, pos, head_index, d_head)
        self.hook_q = _hook_point()  # (batch, pos, head_index, d_head)
        self.hook_v = _hook_point()  # (batch, pos, head_index, d_head)
        self.hook_z = _hook_point()  # (batch, pos, head_index, d_head)
        self.hook_attn_scores = _hook_point()  # (batch, head_index, query_pos, key_pos)
        self.hook_pattern = _hook_point()  # (batch, head_index, query_pos, key_pos)

    def forward(self, x: Tensor) -> Tensor:
        q = self.hook_q(torch.einsum("bpd,hdk->bphk", x, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bpd,hdk->bphk", x, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bpd,hdk->bphk", x, self.W_V) + self.b_V)
        scores = torch.einsum("bqhk,bshk->bhqs", q, k) / self.attn_scale
        pos = x.shape[1]
        scores = self.hook_attn_scores(torch.where(self.mask[:pos, :pos], scores, self.IGNORE))
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        z = self.hook_z(torch.einsum("bhqs,bshk->bqhk", pattern, v))
        return torch.einsum("bqhk,hkd->bqd", z, self.W_O) + self.b_O  # (batch, pos, d_model)


class _Mlp(nn.Module):
    def __init__(self, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.W_in, self.b_in = _empty(d_model, d_mlp), _empty(d_mlp)
        self.W_out, self.b_out = _empty(d_mlp, d_model), _empty(d_model)
        self.hook_pre = _hook_point()  # (batch, pos, d_mlp)
        self.hook_post = _hook_point()  # (batch, pos, d_mlp)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        post = self.hook_post(pre.relu())
        return post @ self.W_out + self.b_out


class _Block(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.attn = _Attention(cfg)
        self.mlp = _Mlp(cfg["d_model"], cfg["d_mlp"])
        self.hook_resid_pre = _hook_point()  # (batch, pos, d_model), as are the four below
        self.hook_attn_out = _hook_point()
        self.hook_resid_mid = _hook_point()
        self.hook_mlp_out = _hook_point()
        self.hook_resid_post = _hook_point()

    def forward(self, resid_pre: Tensor) -> Tensor:
        resid_pre = self.hook_resid_pre(resid_pre)
        resid_mid = self.hook_resid_mid(resid_pre + self.hook_attn_out(self.attn(resid_pre)))
        return self.hook_resid_post(resid_mid + self.hook_mlp_out(self.mlp(resid_mid)))


class _Unembed(nn.Module):
    def __init__(self, d_model: int, d_vocab_out: int) -> None:
        super().__init__()
        self.W_U, self.b_U = _empty(d_model, d_vocab_out), _empty(d_vocab_out)

    def forward(self, resid: Tensor) -> Tensor:
        return resid @ self.W_U + self.b_U  # (batch, pos, d_vocab_out)


def _define_view_class() -> type:
    try:
        from transformer_lens import ActivationCache
    except ImportError as error:
        raise ImportError("the TransformerLens view needs transformer-lens: pip install 'groklab[transformer-lens]'") from error
    try:
        from transformer_lens import HookedRootModule  # 3.x and 4.x
    except ImportError:
        from transformer_lens.hook_points import HookedRootModule  # 2.x

    class TransformerLensView(HookedRootModule):
        """The engine's transformer as a HookedRootModule over all positions: forward(tokens
        (batch, pos <= 3) = [a, b, '=']) -> logits (batch, pos, d_vocab_out), with
        HookedTransformer's hook names (HOOK_NAMES), activation shapes and state-dict layout.
        The logits at '=' (position 2) are the engine's. `config` is hooked_transformer_config's."""

        def __init__(self, config: Mapping[str, Any]) -> None:
            super().__init__()
            self.config = dict(config)
            self.embed = _Embed(config["d_vocab"], config["d_model"])
            self.hook_embed = _hook_point()  # (batch, pos, d_model)
            self.pos_embed = _PosEmbed(config["n_ctx"], config["d_model"])
            self.hook_pos_embed = _hook_point()  # (batch, pos, d_model)
            self.blocks = nn.ModuleList([_Block(config)])
            self.unembed = _Unembed(config["d_model"], config["d_vocab_out"])
            self.setup()

        @property
        def cfg(self) -> SimpleNamespace:
            """The HookedTransformerConfig fields that TransformerLens's helpers read (ActivationCache's
            decompositions, transformer_lens.patching), with the device the weights are on now."""
            weights = self.embed.W_E
            return SimpleNamespace(**self.config, n_key_value_heads=None, device=weights.device, dtype=weights.dtype)

        def forward(self, tokens: Tensor) -> Tensor:
            if tokens.dim() == 1:
                tokens = tokens[None]  # one sequence, as HookedTransformer takes it
            if tokens.shape[1] > self.config["n_ctx"]:
                raise ValueError(f"tokens: at most {self.config['n_ctx']} positions, got {tokens.shape[1]}")
            resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens))
            for block in self.blocks:
                resid = block(resid)
            return self.unembed(resid)

        def run_with_cache(
            self, *model_args: Any, return_cache_object: bool = True, remove_batch_dim: bool = False, **kwargs: Any
        ) -> tuple[Tensor, Any]:
            """(logits, cache): an ActivationCache, as HookedTransformer's (HookedRootModule's own
            returns a plain dict; return_cache_object=False gives that)."""
            out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
            if not return_cache_object:
                return out, cache_dict
            return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    # Its module-level name, so pickle and repr find it as groklab.client.lens.TransformerLensView.
    TransformerLensView.__qualname__ = "TransformerLensView"
    return TransformerLensView


def _view_class() -> type:
    if "TransformerLensView" not in globals():
        globals()["TransformerLensView"] = _define_view_class()
    return globals()["TransformerLensView"]


def __getattr__(name: str) -> Any:
    # PEP 562: the view's base class is transformer_lens's, so the class is made on first access.
    if name == "TransformerLensView":
        return _view_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
