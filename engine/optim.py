"""AdamW, SGD and Muon for an ensemble: every parameter has a leading member dimension K, and every
member has its own learning rate, weight decay, betas and step count. The grokking methods of the
run spec act here too, on the flat buffers: Grokfast's gradient filter (GradFilter), ⊥Grad's
projection (EnsembleOptimizer.orthogonal_gradient) and Omnigrok's norm constraint (update).

The update is torch.optim.AdamW's (decoupled weight decay) and torch.optim.SGD's (no momentum,
weight decay added to the gradient) applied row by row, Muon's torch.optim.Muon's with AdamW on
the other parameters, and a member's state converts to and from those optimizers' state_dict, so
a member checkpoints and resumes exactly like a lone run.

All parameters live in one (K, N) buffer (`flat`, the named parameters are views of it) and so do
the gradient and the Adam moments: a step is a handful of elementwise kernels over (K, N) with the
per-member values as (K, 1) columns, whatever the number of parameters, instead of ~20 kernels
per parameter. The per-member values are device tensors updated in place (no allocation, no host
read), so a step can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from engine.spec import EmaGradFilter, GradFilterSpec, OptimizerSpec

# ⊥Grad's guard against a zero tensor or gradient, as in Prieto et al.'s reference code.
ORTHOGONAL_EPS = 1e-30

# Columns of EnsembleOptimizer.hyper, set from the host when the schedule changes them.
LR, WEIGHT_DECAY, DECAY, NEG_LR, NEG_INV_LR = range(5)


# Muon's hidden matrices (the rest trains with AdamW), and each as the 2-D matrix Muon orthogonalises:
# W_Q, W_K, W_V (H, d, k) as d_model x (H d_head), W_O (H, k, d) as (H d_head) x d_model.
MUON_PARAMETERS = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")
# torch.optim.Muon's Newton-Schulz defaults (Keller Jordan's quintic coefficients, 5 steps, eps).
NS_COEFFICIENTS, NS_STEPS, NS_EPS = (3.4445, -4.7750, 2.0315), 5, 1e-7


def as_matrix(name: str, value: Tensor) -> Tensor:
    """A Muon parameter (K, *shape) as the (K, rows, cols) matrix Muon sees (a copy for W_Q, W_K, W_V)."""
    if name in ("W_Q", "W_K", "W_V"):
        return value.transpose(1, 2).flatten(2)  # (K, H, d, k) -> (K, d, H k)
    if name == "W_O":
        return value.flatten(1, 2)  # (K, H, k, d) -> (K, H k, d)
    return value


def from_matrix(name: str, matrix: Tensor, shape: Sequence[int]) -> Tensor:
    """as_matrix's inverse: (K, rows, cols) -> (K, *shape)."""
    if name in ("W_Q", "W_K", "W_V"):
        heads, _, k = shape
        return matrix.unflatten(2, (heads, k)).transpose(1, 2)
    return matrix.reshape(len(matrix), *shape)


def newton_schulz(matrices: Tensor) -> Tensor:
    """torch.optim.Muon's orthogonalisation (_zeropower_via_newtonschulz, in bfloat16 as there) of a
    batch (B, r, c) with r <= c, each matrix on its own."""
    a, b, c = NS_COEFFICIENTS
    x = matrices.bfloat16()
    x = x / torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True).clamp(min=NS_EPS)
    for _ in range(NS_STEPS):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x


class GradFilter:
    """Grokfast (Lee et al. 2024, "Grokfast: accelerated grokking by amplifying slow gradients",
    Algorithms 1 and 2, and their reference code grokfast.py) for every member of an ensemble: the
    gradient plus lamb times its slow component, before the optimizer step.

    EMA: the average starts at the first gradient, then ema = ema * alpha + g * (1 - alpha) and
    g + lamb * ema. MA: the last `window` gradients in a ring; once it is full, g + lamb * their mean.
    All state is (K, N) (a ring (window, K, N)) beside the flat gradient; alpha, lamb and the
    steps filtered are (K, 1) device columns, so a step reads nothing to the host.
    """

    def __init__(self, specs: Sequence[GradFilterSpec], flat: Tensor):
        dtype, device = flat.dtype, flat.device
        self.kind = specs[0].kind  # one per pack (engine.packing), as an MA ring's window
        self.lamb = torch.tensor([[s.lamb] for s in specs], dtype=dtype, device=device)
        self.steps = torch.zeros(len(specs), 1, dtype=torch.long, device=device)
        self.host_steps = [0] * len(specs)
        if isinstance(specs[0], EmaGradFilter):
            self.alpha = torch.tensor([[s.alpha] for s in specs], dtype=dtype, device=device)  # type: ignore[union-attr]
            self.one_minus_alpha = torch.tensor([[1 - s.alpha] for s in specs], dtype=dtype, device=device)  # type: ignore[union-attr]
            self.state = torch.zeros_like(flat)  # the EMA
        else:
            self.window = specs[0].window  # type: ignore[union-attr]
            self.scale = torch.tensor([[s.lamb / self.window] for s in specs], dtype=dtype, device=device)
            self.state = flat.new_zeros(self.window, *flat.shape)  # the ring of the last gradients
            self.members = torch.arange(len(specs), device=device)

    def apply(self, grad: Tensor) -> Tensor:
        """The filtered gradient (K, N); updates the state."""
        if self.kind == "ema":
            # The EMA starts as the first gradient (lerp by 1 is exactly g; by 0 leaves the EMA as is).
            self.state.lerp_(grad, (self.steps == 0).to(grad.dtype))
            self.state.mul_(self.alpha).addcmul_(grad, self.one_minus_alpha)
            self.steps.add_(1)
            return torch.addcmul(grad, self.state, self.lamb)
        self.state.index_put_((self.steps.view(-1) % self.window, self.members), grad)
        self.steps.add_(1)
        full = (self.steps >= self.window).to(grad.dtype)  # the authors' warm-up: no filter before
        return torch.addcmul(grad, self.state.sum(dim=0), self.scale * full)

    def reset(self, member: int) -> None:
        self.steps[member] = 0
        self.host_steps[member] = 0
        self.state[..., member, :].zero_()

    def keep(self, members: Tensor) -> None:
        self.host_steps = [self.host_steps[r] for r in members.tolist()]
        for name in ("lamb", "steps", "alpha", "one_minus_alpha", "scale"):
            if hasattr(self, name):
                setattr(self, name, getattr(self, name)[members])
        self.state = self.state[..., members, :]
        if self.kind == "ma":
            self.members = torch.arange(len(members), device=members.device)

    def member_state(self, member: int) -> dict[str, Any]:
        return {"steps": self.host_steps[member], "state": self.state[..., member, :].clone()}

    def load_member_state(self, member: int, state: dict[str, Any]) -> None:
        self.host_steps[member] = int(state["steps"])
        self.steps[member] = int(state["steps"])
        self.state[..., member, :] = state["state"]


class EnsembleOptimizer:
    """One optimizer over stacked parameters (K, ...); rows are members, in the order of `specs`.

    `params` are the parameters in the order their state_dict indexes them; `flat` (K, N) holds
    them all side by side (params[i] a view of its columns). Without `flat`, a single parameter
    is its own flat buffer.
    """

    def __init__(
        self,
        specs: Sequence[OptimizerSpec],
        params: Sequence[Tensor],
        flat: Tensor | None = None,
        grad_filters: Sequence[GradFilterSpec | None] | None = None,
        weight_norms: Tensor | None = None,
        names: Sequence[str] | None = None,
    ):
        self.kind = specs[0].kind
        if flat is None:
            if len(params) != 1:
                raise ValueError("EnsembleOptimizer: several parameters need their flat (K, N) buffer")
            flat = params[0].detach().view(len(specs), -1)
        self.flat = flat
        self.params = list(params)
        self.shapes = [tuple(p.shape[1:]) for p in self.params]
        self.columns: list[tuple[int, int]] = []
        start = 0
        for p in self.params:
            self.columns.append((start, start + p[0].numel()))
            start += p[0].numel()
        dtype, device = flat.dtype, flat.device
        # Constant per member: rounded once from the float64 the host computes, as torch does.
        self.one_minus_beta1 = torch.tensor([[1 - s.betas[0]] for s in specs], dtype=dtype, device=device)
        self.one_minus_beta2 = torch.tensor([[1 - s.betas[1]] for s in specs], dtype=dtype, device=device)
        self.betas = torch.tensor([list(s.betas) for s in specs], dtype=dtype, device=device)  # (K, 2)
        self.eps = torch.tensor([[s.eps] for s in specs], dtype=dtype, device=device)  # (K, 1) Adam's epsilon
        self.hyper = torch.zeros(len(specs), 5, dtype=dtype, device=device)  # LR, WEIGHT_DECAY, DECAY, NEG_LR, NEG_INV_LR
        self.steps = torch.zeros(len(specs), 1, dtype=dtype, device=device)  # Adam's t per member
        self.host_steps = [0] * len(specs)  # the same, for state_dict without reading the device
        self.orthogonal = specs[0].orthogonal_gradients  # one per pack (engine.packing)
        # Each column's parameter tensor, for ⊥Grad's per-tensor sums (a device index, no host read).
        self.segment_ids = None
        if self.orthogonal:
            sizes = torch.tensor([end - start for start, end in self.columns])
            self.segment_ids = torch.repeat_interleave(torch.arange(len(self.columns)), sizes).to(device)
        self.weight_norms = weight_norms  # (K, 1) Omnigrok's norm per member, or None: no constraint
        filters = [f for f in grad_filters or [] if f is not None]
        self.grad_filter = GradFilter(filters, flat) if filters else None  # all members or none (engine.packing)
        adam = self.kind in ("adamw", "muon")
        self.exp_avg = torch.zeros_like(flat) if adam else None
        self.exp_avg_sq = torch.zeros_like(flat) if adam else None
        self.muon: list[int] = []  # indices of the parameters Muon trains
        self.muon_buffer: Tensor | None = None
        if self.kind == "muon":
            if names is None:
                raise ValueError("EnsembleOptimizer: Muon needs the parameters' names")
            self.names = list(names)
            self.muon = [i for i, name in enumerate(self.names) if name in MUON_PARAMETERS]
            self.muon_momentum = torch.tensor([[s.resolved_muon_momentum] for s in specs], dtype=dtype, device=device)
            self.one_minus_momentum = torch.tensor([[1 - s.resolved_muon_momentum] for s in specs], dtype=dtype, device=device)
            self.muon_buffer = torch.zeros_like(flat)  # Muon's momentum (its columns alone are used)

    @staticmethod
    def hyper_rows(lrs: Sequence[float], weight_decays: Sequence[float], dtype: torch.dtype) -> Tensor:
        """The host tensor that set_hyperparameters copies into `hyper`: the products in float64
        as torch computes them on the host, rounded once."""
        rows = [[lr, wd, 1 - lr * wd, -lr, -1 / lr] for lr, wd in zip(lrs, weight_decays)]
        return torch.tensor(rows, dtype=torch.float64).to(dtype)

    def set_hyperparameters(self, rows: Tensor) -> None:
        """rows (K, 5) from hyper_rows, on the host (pinned for an asynchronous copy) or the device."""
        self.hyper.copy_(rows, non_blocking=True)

    @torch.no_grad()
    def step(self, lr: Tensor | None = None, weight_decay: Tensor | None = None, grad: Tensor | None = None) -> None:
        """One update of every member. lr, weight_decay (K,): this step's values when given (else those
        last set); grad (K, N): the flat gradient, else read from the parameters' .grad."""
        if lr is not None and weight_decay is not None:
            self.set_hyperparameters(self.hyper_rows(lr.tolist(), weight_decay.tolist(), self.flat.dtype))
        if grad is None:
            grad = torch.cat([p.grad.reshape(p.shape[0], -1) for p in self.params], dim=1)
        self.count_step()
        self.update(grad)

    def count_step(self) -> None:
        """The host's count of the steps taken (for state_dict without reading the device)."""
        self.host_steps = [s + 1 for s in self.host_steps]
        if self.grad_filter is not None:
            self.grad_filter.host_steps = [s + 1 for s in self.grad_filter.host_steps]

    def segment_sums(self, values: Tensor) -> Tensor:
        """(..., N) -> (..., T): the sum over each parameter tensor's columns, one reduction each."""
        sizes = [end - start for start, end in self.columns]
        return torch.stack([part.sum(dim=-1) for part in values.split(sizes, dim=-1)], dim=-1)

    def orthogonal_gradient(self, grad: Tensor) -> Tensor:
        """⊥Grad (Prieto et al. 2025, "Grokking at the edge of numerical stability", eq. 12, and their
        reference code orthograd.py): per member and parameter tensor w with gradient g,
        g_perp = g - (w.g / (w.w + 1e-30)) w, rescaled to g's norm: ||g|| / (||g_perp|| + 1e-30).
        Over the flat (K, N) buffers: per-tensor sums (K, T), spread back by the column's tensor."""
        w, segment_ids = self.flat, self.segment_ids
        assert segment_ids is not None
        sums = self.segment_sums(torch.stack([w * grad, w * w, grad * grad]))  # (3, K, T)
        along = sums[0] / (sums[1] + ORTHOGONAL_EPS)  # (K, T)
        perpendicular = torch.addcmul(grad, along.index_select(1, segment_ids), w, value=-1)
        scale = sums[2].sqrt() / (self.segment_sums(perpendicular.square()).sqrt() + ORTHOGONAL_EPS)
        return perpendicular * scale.index_select(1, segment_ids)

    def update(self, grad: Tensor) -> None:
        """The step's device work alone: no host values, a fixed set of kernels (graph capture).
        The gradient passes Grokfast's filter, then ⊥Grad's projection, then the update; Omnigrok's
        norm constraint rescales the weights after it."""
        if self.grad_filter is not None:
            grad = self.grad_filter.apply(grad)
        if self.orthogonal:
            grad = self.orthogonal_gradient(grad)
        if self.kind == "sgd":
            self._sgd(grad)
        else:
            self._adamw(grad)  # Muon: AdamW's update outside Muon's columns
        if self.weight_norms is not None:
            # Omnigrok (Liu et al. 2023): each member's weights back onto the sphere of its norm
            self.flat.mul_(self.weight_norms / torch.linalg.vector_norm(self.flat, dim=1, keepdim=True))

    def _sgd(self, grad: Tensor) -> None:
        # torch.optim.SGD: g + wd * p, then p - lr * that
        p, hyper = self.flat, self.hyper
        p.addcmul_(torch.addcmul(grad, p, hyper[:, WEIGHT_DECAY, None]), hyper[:, NEG_LR, None])

    def _adamw(self, grad: Tensor) -> None:
        p, hyper = self.flat, self.hyper
        assert self.exp_avg is not None and self.exp_avg_sq is not None
        self.steps.add_(1)
        bias_correction = 1 - self.betas.pow(self.steps)  # (K, 2): 1 - beta1^t, 1 - beta2^t
        # torch: p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps) with step_size = lr / bc1; written
        # as p += m / denom with denom = sqrt(v) * c + e, c = 1 / (sqrt(bc2) * -step_size) and
        # e = eps / -step_size: two (K, N) kernels fewer, the same to ~1 ulp.
        inv_neg_step_size = bias_correction[:, :1] * hyper[:, NEG_INV_LR, None]  # -bc1 / lr
        scale = inv_neg_step_size / bias_correction[:, 1:].sqrt()
        p.mul_(hyper[:, DECAY, None])
        self.exp_avg.lerp_(grad, self.one_minus_beta1)  # as torch does
        # torch: v * beta2 + (1 - beta2) * g^2 by mul_ and addcmul_; one lerp, the same to ~1 ulp
        self.exp_avg_sq.lerp_(grad.square(), self.one_minus_beta2)
        denom = torch.addcmul(inv_neg_step_size * self.eps, self.exp_avg_sq.sqrt(), scale)
        if self.kind != "muon":
            p.addcdiv_(self.exp_avg, denom)
            return
        step = self.exp_avg / denom
        self._muon_steps(grad, step)
        p.add_(step)

    def _muon_steps(self, grad: Tensor, step: Tensor) -> None:
        """torch.optim.Muon's update of its parameters (nesterov, adjust_lr_fn="match_rms_adamw"),
        written into their columns of `step` (K, N): momentum, Newton-Schulz over every member's
        matrices of one shape as one batch, then -lr * 0.2 sqrt(max(rows, cols)) times that. The
        weight decay is applied with AdamW's (both decay decoupled, by 1 - lr wd)."""
        assert self.muon_buffer is not None
        self.muon_buffer.lerp_(grad, self.one_minus_momentum)
        nesterov = grad.lerp(self.muon_buffer, self.muon_momentum)
        members = len(grad)
        groups: dict[tuple[int, int], list[tuple[int, Tensor]]] = {}
        for i in self.muon:
            start, end = self.columns[i]
            matrix = as_matrix(self.names[i], nesterov[:, start:end].view(members, *self.shapes[i]))
            wide = matrix if matrix.shape[1] <= matrix.shape[2] else matrix.mT  # as torch, rows <= cols
            groups.setdefault(tuple(wide.shape[1:]), []).append((i, wide))  # type: ignore[arg-type]
        for group in groups.values():
            orthogonal = newton_schulz(torch.cat([wide for _, wide in group])).split(members)
            for (i, wide), update in zip(group, orthogonal):
                start, end = self.columns[i]
                rows, cols = as_matrix(self.names[i], self.params[i][:1]).shape[1:]
                update = update if update.shape[1] == rows else update.mT
                neg_lr = self.hyper[:, NEG_LR, None, None] * (0.2 * math.sqrt(max(rows, cols)))
                step[:, start:end].view(members, *self.shapes[i]).copy_(
                    from_matrix(self.names[i], update * neg_lr, self.shapes[i])
                )

    def reset(self, member: int) -> None:
        """A fresh optimizer for one member (PhaseSpec.reset_optimizer)."""
        self.steps[member] = 0
        self.host_steps[member] = 0
        if self.grad_filter is not None:
            self.grad_filter.reset(member)
        if self.muon_buffer is not None:
            self.muon_buffer[member].zero_()
        if self.exp_avg is not None and self.exp_avg_sq is not None:
            self.exp_avg[member].zero_()
            self.exp_avg_sq[member].zero_()

    def keep(self, members: Tensor, flat: Tensor, params: Sequence[Tensor]) -> None:
        """Keeps only the rows `members` (a device index tensor), now stored in `flat` and `params`."""
        self.flat, self.params = flat, list(params)
        host = members.tolist()
        self.host_steps = [self.host_steps[r] for r in host]
        if self.grad_filter is not None:
            self.grad_filter.keep(members)
        kept = ("one_minus_beta1", "one_minus_beta2", "betas", "eps", "hyper", "steps", "exp_avg", "exp_avg_sq")
        for name in (*kept, "weight_norms", "muon_buffer", "muon_momentum", "one_minus_momentum"):
            value = getattr(self, name, None)
            if value is not None:
                setattr(self, name, value[members])

    def member_state_dict(self, member: int, spec: OptimizerSpec, lr: float, weight_decay: float) -> dict[str, Any]:
        """Member `member`'s state as torch.optim.AdamW / SGD's state_dict() would hold it, and
        Grokfast's state (flat, in the parameters' column order) under "grad_filter"."""
        state_dict = self._torch_state_dict(member, spec, lr, weight_decay)
        if self.grad_filter is not None:
            state_dict["grad_filter"] = self.grad_filter.member_state(member)
        return state_dict

    def _torch_state_dict(self, member: int, spec: OptimizerSpec, lr: float, weight_decay: float) -> dict[str, Any]:
        if self.kind == "sgd":
            group = {"lr": lr, "momentum": 0, "dampening": 0, "weight_decay": weight_decay, "nesterov": False}
            return {"state": {}, "param_groups": [{**group, "params": list(range(len(self.params)))}]}
        adamw = self._adamw_state_dict(member, spec, lr, weight_decay, [i for i in range(len(self.params)) if i not in self.muon])
        if self.kind != "muon":
            return adamw
        return {"adamw": adamw, "muon": self._muon_state_dict(member, spec, lr, weight_decay)}

    def _adamw_state_dict(
        self, member: int, spec: OptimizerSpec, lr: float, weight_decay: float, params: list[int]
    ) -> dict[str, Any]:
        """torch.optim.AdamW's state_dict over the parameters `params` (numbered 0.. in that order)."""
        assert self.exp_avg is not None and self.exp_avg_sq is not None
        state = {}
        step = self.host_steps[member]
        if step > 0:  # a fresh torch optimizer has no state yet
            for j, i in enumerate(params):
                (start, end), shape = self.columns[i], self.shapes[i]
                state[j] = {
                    "step": torch.tensor(float(step), dtype=torch.float32),
                    "exp_avg": self.exp_avg[member, start:end].view(shape).clone(),
                    "exp_avg_sq": self.exp_avg_sq[member, start:end].view(shape).clone(),
                }
        group = {"lr": lr, "betas": spec.betas, "eps": spec.eps, "weight_decay": weight_decay, "amsgrad": False}
        return {"state": state, "param_groups": [{**group, "params": list(range(len(params)))}]}

    def _muon_state_dict(self, member: int, spec: OptimizerSpec, lr: float, weight_decay: float) -> dict[str, Any]:
        """torch.optim.Muon's state_dict over the Muon parameters, each as its matrix (as_matrix)."""
        assert self.muon_buffer is not None
        state = {}
        if self.host_steps[member] > 0:
            for j, i in enumerate(self.muon):
                start, end = self.columns[i]
                buffer = self.muon_buffer[member : member + 1, start:end].view(1, *self.shapes[i])
                state[j] = {"momentum_buffer": as_matrix(self.names[i], buffer)[0].clone()}
        group = {
            "lr": lr, "weight_decay": weight_decay, "momentum": spec.resolved_muon_momentum, "nesterov": True,
            "ns_coefficients": NS_COEFFICIENTS, "eps": NS_EPS, "ns_steps": NS_STEPS, "adjust_lr_fn": "match_rms_adamw",
        }  # fmt: skip
        return {"state": state, "param_groups": [{**group, "params": list(range(len(self.muon)))}]}

    def load_member_state_dict(self, member: int, state_dict: dict[str, Any]) -> None:
        self.reset(member)
        if self.grad_filter is not None and "grad_filter" in state_dict:
            self.grad_filter.load_member_state(member, state_dict["grad_filter"])
        if self.kind == "sgd":
            return
        adam_params = [i for i in range(len(self.params)) if i not in self.muon]
        self._load_adamw(member, state_dict["adamw"] if self.kind == "muon" else state_dict, adam_params)
        if self.kind == "muon":
            assert self.muon_buffer is not None
            for j, state in state_dict["muon"]["state"].items():
                i = self.muon[int(j)]
                start, end = self.columns[i]
                buffer = from_matrix(self.names[i], state["momentum_buffer"][None], self.shapes[i])
                self.muon_buffer[member, start:end] = buffer.reshape(-1)

    def _load_adamw(self, member: int, state_dict: dict[str, Any], params: list[int]) -> None:
        assert self.exp_avg is not None and self.exp_avg_sq is not None
        for j, state in state_dict["state"].items():
            start, end = self.columns[params[int(j)]]
            self.host_steps[member] = int(float(state["step"]))
            self.steps[member] = float(state["step"])
            self.exp_avg[member, start:end] = state["exp_avg"].reshape(-1)
            self.exp_avg_sq[member, start:end] = state["exp_avg_sq"].reshape(-1)
