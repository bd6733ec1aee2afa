"""GET analyses of a run or an experiment: JSON by default, CSV rows with ?format=csv."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse
from pydantic import ValidationError

from api.auth import ReaderDep
from api.deps import SessionDep, SettingsDep
from engine.spec import error_field
from groklab import analysis, kinds
from groklab.analysis_models import ExperimentAnalysis, RunAnalysisResponse
from groklab.errors import InvalidInput
from groklab.run_labels import analyse_stored_runs
from groklab.run_specs import run_spec
from groklab.store import runs as run_store

router = APIRouter(tags=["analysis"])
_DEFAULTS = analysis.Thresholds()
Format = Literal["json", "csv"]


def thresholds(
    memorised_acc: float = Query(_DEFAULTS.memorised_acc, gt=0, le=1),
    generalised_acc: float = Query(_DEFAULTS.generalised_acc, gt=0, le=1),
    no_delay_factor: float = Query(_DEFAULTS.no_delay_factor, ge=1),
    ungrokked_below: float = Query(_DEFAULTS.ungrokked_below, gt=0, le=1),
    semi_min: float = Query(_DEFAULTS.semi_min, ge=0, le=1),
    semi_rise: float = Query(_DEFAULTS.semi_rise, ge=0, le=1),
    loss_target: float = Query(_DEFAULTS.loss_target, gt=0),
    efficiency_loss: float = Query(_DEFAULTS.efficiency_loss, gt=0),
    circuit_formed_loss: float = Query(_DEFAULTS.circuit_formed_loss, gt=0),
) -> analysis.Thresholds:
    try:
        return analysis.Thresholds(
            memorised_acc=memorised_acc,
            generalised_acc=generalised_acc,
            no_delay_factor=no_delay_factor,
            ungrokked_below=ungrokked_below,
            semi_min=semi_min,
            semi_rise=semi_rise,
            loss_target=loss_target,
            efficiency_loss=efficiency_loss,
            circuit_formed_loss=circuit_formed_loss,
        )
    except ValidationError as exc:
        field, message = error_field(exc.errors()[0])
        raise InvalidInput(message, field=field) from exc


ThresholdsDep = Annotated[analysis.Thresholds, Depends(thresholds)]

_CSV_TOO = {200: {"content": {"application/json": {}, "text/csv": {}}}}


@router.get("/v1/runs/{run_id}/analysis", response_model=RunAnalysisResponse, responses=_CSV_TOO)
def run_analysis(
    run_id: int,
    limits: ThresholdsDep,
    principal: ReaderDep,
    session: SessionDep,
    settings: SettingsDep,
    format: Format = Query("json"),
) -> Any:
    """Milestones, final values and the label of one run (any status: the series so far)."""
    run = run_store.get_run(session, run_id, owner=principal.owner)
    analysed = analyse_stored_runs(session, [run], limits, cache_bytes=settings.answer_cache_bytes)
    body = {"run_id": run.id, "status": run.status, "thresholds": limits.model_dump(), **analysed[run.id].model_dump()}
    if format == "csv":
        fields = ["run_id", "status", *(k for k in body if k not in ("run_id", "status", "thresholds"))]
        return PlainTextResponse(analysis.rows_csv([body], fields), media_type="text/csv")
    return RunAnalysisResponse.model_validate(body)


@router.get("/v1/experiments/{experiment_id}/analysis", response_model=ExperimentAnalysis, responses=_CSV_TOO)
def experiment_analysis(
    experiment_id: int,
    limits: ThresholdsDep,
    principal: ReaderDep,
    session: SessionDep,
    settings: SettingsDep,
    format: Format = Query("json"),
) -> Any:
    """Accuracy vs D, D_crit, weight-decay collapse and efficiency over the runs that succeeded."""
    experiment = run_store.get_experiment(session, experiment_id, owner=principal.owner)
    succeeded = [run for run in experiment.runs if run.status == run_store.SUCCEEDED]
    analysed = analyse_stored_runs(session, succeeded, limits, cache_bytes=settings.answer_cache_bytes)
    records = [
        analysis.RunRecord(
            id=run.id,
            index=run.index,
            status=run.status,
            role=run.role or "run",
            spec=run_spec(run),
            analysis=analysed.get(run.id),
            search_round=run.search_round,
        )
        for run in experiment.runs
    ]
    if format == "csv":
        return PlainTextResponse(analysis.rows_csv([analysis.run_row(run) for run in records]), media_type="text/csv")
    return analysis.experiment_analysis(experiment.id, records, limits, kinds.analysis_sections(experiment, records, limits))
