"""Which runs may train together as one batched ensemble (torch-free, so the api can decide)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from engine.spec import RunSpec, ToyCircuitsSpec


def pack_key(spec: RunSpec) -> Hashable | None:
    """Runs with equal keys share one model shape and task table; None: this run trains alone.

    The toy model has no batched form, and minibatch runs draw their own batches.
    """
    if isinstance(spec.model, ToyCircuitsSpec) or spec.optimizer.batch_size is not None:
        return None
    return (
        spec.model.model_dump_json(exclude={"init_scale"}),  # members may start at different scales
        spec.task.op,
        spec.task.vocab_size,
        spec.loss,
        spec.resolved_loss_precision,
        spec.precision,
        spec.optimizer.kind,
        spec.optimizer.orthogonal_gradients,
        # one filter state per pack: its kind, and an MA ring's window
        None if spec.grad_filter is None else (spec.grad_filter.kind, getattr(spec.grad_filter, "window", None)),
        spec.weight_norm is not None,
        spec.device,
    )


def pack_runs(specs: Sequence[RunSpec], size: int) -> list[list[int]]:
    """Indices of `specs` grouped into packs of at most `size` runs with equal keys, in order."""
    packs: list[list[int]] = []
    open_pack: dict[Hashable, list[int]] = {}
    for index, spec in enumerate(specs):
        key = pack_key(spec)
        if key is None or size <= 1:
            packs.append([index])
            continue
        pack = open_pack.get(key)
        if pack is None or len(pack) >= size:
            pack = []
            open_pack[key] = pack
            packs.append(pack)
        pack.append(index)
    return packs
