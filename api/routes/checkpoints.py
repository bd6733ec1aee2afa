"""/v1/runs/{id}/checkpoints: a run's stored checkpoints, and their weights as safetensors;
/v1/runs/{id}/fourier: the Fourier view of a stored checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api.auth import ReaderDep
from api.deps import CheckpointStoreDep, SessionDep
from engine.spec import PROGRESS_MEASURES_DEFINED_FOR
from groklab.errors import InvalidInput, NotFound
from groklab.checkpoint_format import decode, model_weights
from groklab.run_specs import run_spec
from groklab.store import runs as run_store
from groklab.store.checkpoint_store import CheckpointInfo

router = APIRouter(prefix="/v1/runs", tags=["checkpoints"])

CHUNK_BYTES = 1 << 20


class CheckpointOut(BaseModel):
    step: int
    bytes: int
    sha256: str
    kept: bool
    created_at: datetime


class CheckpointList(BaseModel):
    run_id: int
    checkpoints: list[CheckpointOut]


def _out(info: CheckpointInfo) -> CheckpointOut:
    return CheckpointOut(step=info.step, bytes=info.size_bytes, sha256=info.sha256, kept=info.kept, created_at=info.created_at)


@router.get("/{run_id}/checkpoints", response_model=CheckpointList)
def list_checkpoints(run_id: int, principal: ReaderDep, session: SessionDep, store: CheckpointStoreDep) -> CheckpointList:
    run_store.get_run(session, run_id, owner=principal.owner)
    return CheckpointList(run_id=run_id, checkpoints=[_out(info) for info in store.list_checkpoints(run_id)])


def _select(stored: list[CheckpointInfo], run_id: int, step: str) -> CheckpointInfo:
    if step != "latest" and not step.isdigit():
        raise InvalidInput(f"step must be a step number or 'latest', not {step!r}", field="step")
    wanted = stored[-1:] if step == "latest" else [info for info in stored if info.step == int(step)]
    if not wanted:
        steps = ", ".join(str(info.step) for info in stored) or "none"
        raise NotFound(f"run {run_id} has no checkpoint at step {step}; stored steps: {steps}", field="step")
    return wanted[0]


@router.get(
    "/{run_id}/checkpoints/{step}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "a safetensors file"}},
)
def download_checkpoint(
    run_id: int,
    principal: ReaderDep,
    session: SessionDep,
    store: CheckpointStoreDep,
    step: str = Path(..., description="A stored step, or `latest`.", max_length=20),
    optimizer: bool = Query(
        False,
        description="The whole checkpoint (AdamW state, training split and sampler state too, "
        "as resumed from), not only the model's weights.",
    ),
    if_none_match: str | None = Header(None),
) -> Response:
    """The model's weights at a stored step as safetensors, under the engine's parameter names."""
    run_store.get_run(session, run_id, owner=principal.owner)
    info = _select(store.list_checkpoints(run_id), run_id, step)
    etag = f'"{info.sha256[:32]}-{"full" if optimizer else "weights"}"'
    headers = {"ETag": etag, "X-Checkpoint-Step": str(info.step)}
    if if_none_match == etag:
        return Response(status_code=304, headers=headers)
    _, data = store.get(run_id, info.step)
    body = data if optimizer else model_weights(data)
    kind = "checkpoint" if optimizer else "weights"
    headers["Content-Disposition"] = f'attachment; filename="run-{run_id}-step-{info.step}-{kind}.safetensors"'
    headers["Content-Length"] = str(len(body))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), CHUNK_BYTES):
            yield body[start : start + CHUNK_BYTES]

    return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)


class FourierView(BaseModel):
    run_id: int
    step: int
    frequencies: list[int]
    embed_power: list[float]
    logit_power: list[float]
    key_frequencies: list[int]
    kept_steps: list[int]


@router.get("/{run_id}/fourier", response_model=FourierView)
def fourier_view(
    run_id: int,
    principal: ReaderDep,
    session: SessionDep,
    store: CheckpointStoreDep,
    step: str = Query("latest", description="A stored checkpoint's step, or `latest`.", max_length=20),
) -> FourierView:
    """Per frequency k = 1 .. P // 2 (w_k = 2 pi k / P): the power of the embedding W_E over the
    token axis and of the logits over all pairs in cos / sin(w_k (a + b - c)), and the key
    frequencies (engine.progress_measures), at a stored checkpoint."""
    run = run_store.get_run(session, run_id, owner=principal.owner)
    spec = run_spec(run)
    if not spec.supports_progress_measures:
        raise InvalidInput(
            f"run {run_id} is a {spec.model.kind} on '{spec.task.op}': the Fourier view is defined for "
            f"{PROGRESS_MEASURES_DEFINED_FOR}",
            field="run_id",
        )
    stored = store.list_checkpoints(run_id)
    info = _select(stored, run_id, step)
    from engine.progress_measures import fourier_view as compute  # torch: imported on first use only

    _, data = store.get(run_id, info.step)
    view = compute(spec, decode(data).model)
    return FourierView(run_id=run_id, step=info.step, kept_steps=[i.step for i in stored], **view)
