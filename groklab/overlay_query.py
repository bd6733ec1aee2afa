"""The query behind the experiment page's overlay charts, defined once: every run's curves on shared
charts, coloured by a spec field, fed by one grouped metric query (seeds folded into a mean line in
a min/max band, or one line a run).

The dashboard reads it for the reader's choices from GET /v1/experiments/{id}/overlay_query
(api/static/js/compare.js posts the `query` it gets), and the worker keeps the default choice's
answer when an experiment's last run finishes (groklab/lifecycle/finish.py), so that the page's
first open reads a kept answer instead of folding every point.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine.spec import spec_path_error
from groklab.errors import InvalidInput
from groklab.metric_answers import MetricQuery
from groklab.store import metric_reads
from groklab.store.metric_reads import LABEL
from groklab.store.models import Experiment, Run

SERIES = ("test_acc", "train_acc", "train_loss", "test_loss", "param_norm")
"""The charts the page always draws; the reader may add one more series."""
MAX_POINTS = 1000
MIN_POINTS = 50
MAX_ROWS = 100_000
"""Rows of lines x series x buckets the page asks for: the api allows 500,000
(metric_reads.MAX_BUCKET_ROWS), but 200 runs drawn one by one at that size take tens of seconds
to fold and serialise (benchmarks/experiment_page.py); 100,000 keeps 1,000 buckets for up to 16
lines of 6 series. Many lines get fewer buckets."""
PREFERRED_FIELDS = ("phases.1.subset_size", "task.train_size", "phases.0.weight_decay", "optimizer.weight_decay")
"""After a sweep's own fields: D' (ungrokking), D, weight decay."""

Seeds = Literal["mean", "each"]


@dataclass(frozen=True)
class Overlay:
    fields: list[str]
    """The spec fields whose values differ among the runs, but the seed: what the page may colour
    by (besides `label`)."""
    field: str
    query: MetricQuery


def overlay_query(
    experiment: Experiment, runs: Sequence[Run], *, field: str | None = None, seeds: Seeds = "mean", series: str | None = None
) -> Overlay:
    """The grouped query for colouring by `field` (default: the field the experiment varies), the
    seeds folded ("mean") or one line a run ("each"), and an extra series."""
    fields = [path for path in varying_fields([run.spec for run in runs]) if path != "seed"]
    if field is None:
        field = default_field(experiment.spec, fields)
    elif field != LABEL and spec_path_error(field):
        raise InvalidInput(f"{spec_path_error(field)}; give a spec field or '{LABEL}'", field="field")
    group_by = [field, "seed"] if seeds == "each" and field != "seed" else [field]
    names = [*SERIES, *([series] if series and series not in SERIES else [])]
    if LABEL in group_by:
        lines = len(runs)  # the labels are the runs' analyses: not read for a count
    else:
        lines = len(metric_reads.group_runs(runs, group_by, {}, max_groups=len(runs)))
    max_points = max(MIN_POINTS, min(MAX_POINTS, MAX_ROWS // (max(1, lines) * len(names))))
    query = MetricQuery(experiment_id=experiment.id, names=names, max_points=max_points, group_by=group_by, format="json")
    return Overlay(fields=fields, field=field, query=query)


def default_field(experiment_spec: Mapping[str, Any], fields: Sequence[str]) -> str:
    """The field an experiment varies: its sweep's first field, else D' (ungrokking), D, weight
    decay, else the first that varies; never the seed (seeds are folded); `label` when none does."""
    sweep = experiment_spec.get("sweep") or {}
    swept = list({**(sweep.get("grid") or {}), **(sweep.get("zip") or {})})
    return next((path for path in [*swept, *PREFERRED_FIELDS] if path in fields), fields[0] if fields else LABEL)


def varying_fields(specs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The dotted paths whose values differ among the specs (a spec without one counts as null),
    sorted; a list of objects is walked by index (phases.1.subset_size), other lists are values."""
    flat = [_flatten(spec, "", {}) for spec in specs]
    paths = sorted({path for one in flat for path in one})
    return [path for path in paths if len({json.dumps(one.get(path), sort_keys=True) for one in flat}) > 1]


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}" if prefix else key, out)
    elif isinstance(value, list) and value and all(isinstance(inner, Mapping) for inner in value):
        for i, inner in enumerate(value):
            _flatten(inner, f"{prefix}.{i}", out)
    else:
        out[prefix] = value
    return out
