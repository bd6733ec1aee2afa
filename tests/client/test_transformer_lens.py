"""The engine's transformer as a TransformerLens HookedRootModule (groklab.client.lens) with the real
library: the same logits at '=', TransformerLens's hook names and shapes, hooks, caching and
activation patching, the HookedTransformer 2.x/3.x state-dict export, and client.load_model's
formats' refusals (their results through a real server: tests/client/test_checkpoints.py)."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import ActivationCache

from engine.datasets import build_task
from engine.model import build_model
from engine.spec import RunSpec
from groklab.client import lens
from groklab.client import Client, Run

P = 23
SPEC = RunSpec.model_validate(
    {"task": {"op": "add", "p": P}, "model": {"kind": "transformer", "d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64}}
)
D_MODEL, N_HEADS, D_HEAD, D_MLP = 32, 2, 16, 64

# The TransformerLens shape of each activation for a batch of B sequences of 3 tokens.
ACTIVATION_SHAPES = {
    "hook_embed": ("B", 3, D_MODEL),
    "hook_pos_embed": ("B", 3, D_MODEL),
    "blocks.0.hook_resid_pre": ("B", 3, D_MODEL),
    "blocks.0.attn.hook_q": ("B", 3, N_HEADS, D_HEAD),
    "blocks.0.attn.hook_k": ("B", 3, N_HEADS, D_HEAD),
    "blocks.0.attn.hook_v": ("B", 3, N_HEADS, D_HEAD),
    "blocks.0.attn.hook_attn_scores": ("B", N_HEADS, 3, 3),
    "blocks.0.attn.hook_pattern": ("B", N_HEADS, 3, 3),
    "blocks.0.attn.hook_z": ("B", 3, N_HEADS, D_HEAD),
    "blocks.0.hook_attn_out": ("B", 3, D_MODEL),
    "blocks.0.hook_resid_mid": ("B", 3, D_MODEL),
    "blocks.0.mlp.hook_pre": ("B", 3, D_MLP),
    "blocks.0.mlp.hook_post": ("B", 3, D_MLP),
    "blocks.0.hook_mlp_out": ("B", 3, D_MODEL),
    "blocks.0.hook_resid_post": ("B", 3, D_MODEL),
}

# docs/transformer_lens.md's table of the export for this config (d_vocab = P + 1 with '=').
EXPORT_SHAPES = {
    "embed.W_E": (P + 1, D_MODEL),
    "pos_embed.W_pos": (3, D_MODEL),
    "blocks.0.attn.W_Q": (N_HEADS, D_MODEL, D_HEAD),
    "blocks.0.attn.W_O": (N_HEADS, D_HEAD, D_MODEL),
    "blocks.0.attn.b_Q": (N_HEADS, D_HEAD),
    "blocks.0.attn.b_O": (D_MODEL,),
    "blocks.0.attn.W_K": (N_HEADS, D_MODEL, D_HEAD),
    "blocks.0.attn.W_V": (N_HEADS, D_MODEL, D_HEAD),
    "blocks.0.attn.b_K": (N_HEADS, D_HEAD),
    "blocks.0.attn.b_V": (N_HEADS, D_HEAD),
    "blocks.0.attn.mask": (3, 3),
    "blocks.0.attn.IGNORE": (),
    "blocks.0.mlp.W_in": (D_MODEL, D_MLP),
    "blocks.0.mlp.b_in": (D_MLP,),
    "blocks.0.mlp.W_out": (D_MLP, D_MODEL),
    "blocks.0.mlp.b_out": (D_MODEL,),
    "unembed.W_U": (D_MODEL, P),
    "unembed.b_U": (P,),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """A model this small runs fastest on one thread (a training step ~4 ms), while two threads on
    cores that other test processes keep busy stall (~0.3 s a step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def grid() -> Tensor:
    """Every pair [a, b, '='] of the P x P table."""
    return build_task(SPEC.task).tokens


@pytest.fixture(scope="module")
def engine_model(grid: Tensor) -> nn.Module:
    """The engine's transformer with weights away from its init (biases too), logits of a few
    units: noise on every parameter, then a few steps of full-batch gradient descent (by hand:
    the first torch.optim optimizer costs seconds of imports)."""
    model = build_model(SPEC)
    g = torch.Generator().manual_seed(0)
    labels = (grid[:, 0] + grid[:, 1]) % P
    with torch.no_grad():
        for param in model.parameters():
            param += 0.1 * torch.randn(param.shape, generator=g)
    for _ in range(10):
        model.zero_grad()
        F.cross_entropy(model(grid), labels).backward()
        with torch.no_grad():
            for param in model.parameters():
                param -= 0.1 * param.grad
    return model.eval()


@pytest.fixture(scope="module")
def view(engine_model: nn.Module) -> nn.Module:
    return lens.transformer_lens_view(engine_model)


def assert_close(actual: Tensor, expected: Tensor, *, atol: float) -> None:
    # Not torch.testing.assert_close: its first call costs ~2 s of imports.
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    difference = (actual - expected).abs().max().item()
    assert difference <= atol, f"max |difference| {difference:.3g} > {atol}"


def independent_logits_at_eq(p: dict[str, Tensor], tokens: Tensor, *, with_mlp: bool) -> Tensor:
    """The transformer at position 2, written out from the engine's parameters over all three
    positions (no lookup tables, no shortcut): with_mlp=False is the MLP output zeroed."""
    x = p["W_E"][tokens] + p["W_pos"]  # (N, 3, d)
    q = torch.einsum("nd,hdk->nhk", x[:, 2], p["W_Q"])
    k = torch.einsum("npd,hdk->nphk", x, p["W_K"])
    v = torch.einsum("npd,hdk->nphk", x, p["W_V"])
    weights = (torch.einsum("nhk,nphk->nhp", q, k) / math.sqrt(p["W_Q"].shape[-1])).softmax(dim=-1)
    resid = x[:, 2] + torch.einsum("nhp,nphk,hkd->nd", weights, v, p["W_O"])
    if with_mlp:
        resid = resid + F.relu(resid @ p["W_in"] + p["b_in"]) @ p["W_out"] + p["b_out"]
    return resid @ p["W_U"]


def test_importing_the_client_does_not_import_transformer_lens() -> None:
    code = "import sys, groklab.client; assert 'transformer_lens' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_export_needs_no_transformer_lens(engine_model: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    # A notebook on TransformerLens 2.x cannot install 4.x beside it: groklab.client.lens imports and
    # exports with transformer_lens unimportable (a None in sys.modules fails its import).
    for name in [name for name in sys.modules if name.split(".")[0] == "transformer_lens"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "transformer_lens", None)
    with pytest.raises(ImportError):
        import transformer_lens  # noqa: F401
    module_spec = importlib.util.spec_from_file_location("fresh_groklab_lens", lens.__file__)
    fresh_lens = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(fresh_lens)
    state_dict, config = fresh_lens.hooked_transformer_weights(engine_model)
    assert list(state_dict) == list(EXPORT_SHAPES) and config["d_vocab"] == P + 1
    with pytest.raises(ImportError, match="pip install 'groklab\\[transformer-lens\\]'"):
        fresh_lens.transformer_lens_view(engine_model)


def test_logits_at_eq_are_the_engines_on_every_pair(engine_model: nn.Module, view: nn.Module, grid: Tensor) -> None:
    with torch.no_grad():
        logits, expected = view(grid), engine_model(grid)
    assert logits.shape == (P * P, 3, P)
    assert expected.abs().max() > 1  # away from the init's near-zero logits
    assert_close(logits[:, 2], expected, atol=1e-5)


def test_the_cache_has_transformer_lens_names_shapes_and_causal_patterns(view: nn.Module, grid: Tensor) -> None:
    with torch.no_grad():
        logits, cache = view.run_with_cache(grid)
    assert isinstance(cache, ActivationCache)
    assert set(cache.keys()) == set(ACTIVATION_SHAPES) == set(lens.HOOK_NAMES) == set(view.hook_dict)
    for name, shape in ACTIVATION_SHAPES.items():
        assert tuple(cache[name].shape) == tuple(len(grid) if s == "B" else s for s in shape), name
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert cache["pattern", 0] is pattern  # TransformerLens's short names resolve
    assert_close(pattern.sum(dim=-1), torch.ones(len(grid), N_HEADS, 3), atol=1e-6)
    above_diagonal = torch.ones(3, 3, dtype=torch.bool).triu(1)
    assert torch.all(pattern[..., above_diagonal] == 0)
    assert torch.all(cache["blocks.0.attn.hook_attn_scores"][..., above_diagonal] == -math.inf)
    assert torch.all(pattern[:, :, 0, 0] == 1)  # position 0 sees only itself
    # The residual stream is the sum of its parts (ActivationCache reads view.cfg for this).
    parts = cache.decompose_resid(apply_ln=False)
    assert_close(parts.sum(dim=0), cache["blocks.0.hook_resid_post"], atol=1e-5)
    assert_close(cache["blocks.0.hook_resid_post"] @ view.unembed.W_U, logits, atol=1e-5)


def test_zeroing_the_mlp_output_is_the_same_ablation_as_the_engines_math(
    engine_model: nn.Module, view: nn.Module, grid: Tensor
) -> None:
    params = {name: param.detach() for name, param in engine_model.named_parameters()}
    with torch.no_grad():
        # the independent math is the engine's
        assert_close(independent_logits_at_eq(params, grid, with_mlp=True), engine_model(grid), atol=1e-5)
        ablated = view.run_with_hooks(grid, fwd_hooks=[("blocks.0.hook_mlp_out", lambda act, hook: torch.zeros_like(act))])
        expected = independent_logits_at_eq(params, grid, with_mlp=False)
        unhooked = view(grid)
    assert_close(ablated[:, 2], expected, atol=1e-5)
    assert (ablated[:, 2] - unhooked[:, 2]).abs().max() > 0.1  # the MLP mattered
    assert not view.hook_dict["blocks.0.hook_mlp_out"].fwd_hooks  # run_with_hooks removed its hook


def test_patching_resid_mid_at_eq_gives_the_source_runs_logits(view: nn.Module, grid: Tensor) -> None:
    source, target = grid, grid.roll(1, dims=0)  # each pair patched into the run of another
    with torch.no_grad():
        source_logits, source_cache = view.run_with_cache(source)
        target_logits = view(target)

        def patch_eq(resid_mid: Tensor, hook: object) -> Tensor:
            resid_mid[:, 2] = source_cache["blocks.0.hook_resid_mid"][:, 2]
            return resid_mid

        patched = view.run_with_hooks(target, fwd_hooks=[("blocks.0.hook_resid_mid", patch_eq)])
    # After resid_mid, position 2 reads nothing from the other positions: its logits are the source's.
    assert_close(patched[:, 2], source_logits[:, 2], atol=1e-6)
    assert torch.equal(patched[:, :2], target_logits[:, :2])
    assert (patched[:, 2] - target_logits[:, 2]).abs().max() > 0.1


def test_the_hooked_transformer_export_has_the_documented_keys_and_loads_into_the_view(
    engine_model: nn.Module, view: nn.Module, grid: Tensor
) -> None:
    state_dict = lens.hooked_transformer_state_dict(engine_model)
    assert list(state_dict) == list(EXPORT_SHAPES)  # HookedTransformer 2.x's order too
    assert {name: tuple(t.shape) for name, t in state_dict.items()} == EXPORT_SHAPES
    assert list(view.state_dict()) == list(EXPORT_SHAPES)
    for bias in ("blocks.0.attn.b_Q", "blocks.0.attn.b_K", "blocks.0.attn.b_V", "blocks.0.attn.b_O", "unembed.b_U"):
        assert torch.all(state_dict[bias] == 0)
    assert torch.equal(state_dict["blocks.0.attn.mask"], torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    assert state_dict["blocks.0.attn.IGNORE"].item() == -math.inf
    for engine_name, key in lens.HOOKED_TRANSFORMER_NAMES.items():
        assert torch.equal(state_dict[key], getattr(engine_model, engine_name))
    state_dict["embed.W_E"][0, 0] += 1  # copies: the engine's weights are untouched
    assert not torch.equal(state_dict["embed.W_E"], engine_model.W_E)

    assert lens.hooked_transformer_config(engine_model) == {
        "n_layers": 1,
        "d_model": D_MODEL,
        "n_heads": N_HEADS,
        "d_head": D_HEAD,
        "d_mlp": D_MLP,
        "d_vocab": P + 1,
        "d_vocab_out": P,
        "n_ctx": 3,
        "act_fn": "relu",
        "normalization_type": None,
        "attn_only": False,
    }
    fresh = lens.TransformerLensView(lens.hooked_transformer_config(engine_model))
    fresh.load_state_dict(lens.hooked_transformer_state_dict(engine_model.state_dict()), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh(grid), view(grid))


def _run(spec: RunSpec) -> Run:
    return Run(1, 1, "succeeded", 20, 20, {}, None, spec.model_dump(mode="json"))


def test_load_model_refuses_an_unknown_format_and_a_model_without_the_view_before_downloading() -> None:
    # Nothing listens on port 9: each refusal comes before any request. The formats' results
    # through a real server: tests/client/test_checkpoints.py.
    with Client("http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match="format: 'pytorch' is not one of"):
            client.load_model(_run(SPEC), format="pytorch")
        mlp = SPEC.model_copy(update={"model": RunSpec.model_validate({"model": {"kind": "mlp"}}).model})
        toy = RunSpec.model_validate({"model": {"kind": "toy_circuits"}, "optimizer": {"kind": "sgd"}})
        for spec in (mlp, toy):
            for format in ("transformer_lens", "hooked_transformer"):
                with pytest.raises(ValueError, match="only transformer runs"):
                    client.load_model(_run(spec), format=format)
