"""AdamW and SGD for an ensemble: every parameter has a leading member dimension K, and every member
has its own learning rate, weight decay, betas and step count.

The update is torch.optim.AdamW's (decoupled weight decay) and torch.optim.SGD's (no momentum,
weight decay added to the gradient) applied row by row, and a member's state converts to and from
those optimizers' state_dict, so a member checkpoints and resumes exactly like a lone run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from engine.spec import OptimizerSpec

EPS = 1e-8  # torch.optim.AdamW's default


class EnsembleOptimizer:
    """One optimizer over stacked parameters (K, ...); rows are members, in the order of `specs`."""

    def __init__(self, specs: Sequence[OptimizerSpec], params: Sequence[Tensor]):
        self.kind = specs[0].kind
        self.params = list(params)
        device = self.params[0].device
        self.beta1 = torch.tensor([s.betas[0] for s in specs], dtype=torch.float64, device=device)
        self.beta2 = torch.tensor([s.betas[1] for s in specs], dtype=torch.float64, device=device)
        self.steps = torch.zeros(len(specs), dtype=torch.float64, device=device)  # Adam's t per member
        self.exp_avg = [torch.zeros_like(p) for p in self.params] if self.kind == "adamw" else []
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params] if self.kind == "adamw" else []

    @torch.no_grad()
    def step(self, lr: Tensor, weight_decay: Tensor) -> None:
        """lr, weight_decay (K,) float64 on the parameters' device: this step's per-member values."""
        if self.kind == "sgd":
            for p in self.params:
                shape = (-1,) + (1,) * (p.dim() - 1)
                grad = p.grad + p * weight_decay.to(p.dtype).view(shape)
                p.sub_(grad * lr.to(p.dtype).view(shape))
            return
        self.steps += 1
        # Scalars in float64 as torch computes them on the host, then rounded to the parameters' dtype.
        decay = 1 - lr * weight_decay
        step_size = lr / (1 - self.beta1**self.steps)
        bias_correction2_sqrt = (1 - self.beta2**self.steps).sqrt()
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            shape = (-1,) + (1,) * (p.dim() - 1)
            row = lambda x: x.to(p.dtype).view(shape)  # noqa: E731
            grad = p.grad
            p.mul_(row(decay))
            m.lerp_(grad, row(1 - self.beta1))
            v.mul_(row(self.beta2)).add_(grad * grad * row(1 - self.beta2))
            denom = (v.sqrt() / row(bias_correction2_sqrt)).add_(EPS)
            p.sub_((m / denom) * row(step_size))

    def reset(self, member: int) -> None:
        """A fresh optimizer for one member (PhaseSpec.reset_optimizer)."""
        self.steps[member] = 0
        for state in (*self.exp_avg, *self.exp_avg_sq):
            state[member].zero_()

    def keep(self, members: Tensor, params: Sequence[Tensor]) -> None:
        """Keeps only the rows `members` (a device index tensor), now stored in `params`."""
        self.params = list(params)
        self.beta1, self.beta2, self.steps = self.beta1[members], self.beta2[members], self.steps[members]
        self.exp_avg = [m[members] for m in self.exp_avg]
        self.exp_avg_sq = [v[members] for v in self.exp_avg_sq]

    def member_state_dict(self, member: int, spec: OptimizerSpec, lr: float, weight_decay: float) -> dict[str, Any]:
        """Member `member`'s state as torch.optim.AdamW / SGD's state_dict() would hold it."""
        indices = list(range(len(self.params)))
        if self.kind == "sgd":
            group = {"lr": lr, "momentum": 0, "dampening": 0, "weight_decay": weight_decay, "nesterov": False}
            return {"state": {}, "param_groups": [{**group, "params": indices}]}
        state = {}
        if float(self.steps[member]) > 0:  # a fresh torch optimizer has no state yet
            state = {
                i: {
                    "step": self.steps[member].to(torch.float32).cpu(),
                    "exp_avg": self.exp_avg[i][member].clone(),
                    "exp_avg_sq": self.exp_avg_sq[i][member].clone(),
                }
                for i in indices
            }
        group = {"lr": lr, "betas": spec.betas, "eps": EPS, "weight_decay": weight_decay, "amsgrad": False}
        return {"state": state, "param_groups": [{**group, "params": indices}]}

    def load_member_state_dict(self, member: int, state_dict: dict[str, Any]) -> None:
        self.reset(member)
        if self.kind == "sgd":
            return
        for i, state in state_dict["state"].items():
            self.steps[member] = float(state["step"])
            self.exp_avg[int(i)][member] = state["exp_avg"]
            self.exp_avg_sq[int(i)][member] = state["exp_avg_sq"]
