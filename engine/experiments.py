"""Experiment kinds of Varma et al. (2023), each planned into runs, some forked from others: the
names the rest of the code imports. The kinds themselves live one module each in engine/kinds/.

A request is one of several models told apart by `kind`; a request without `kind` is the generic
sweep (the plain `ExperimentSpec`), so a plain spec with seeds and a sweep needs no tag.
`plan_experiment` turns any of them into `PlannedRun`s. A run with a `parent_index` continues from
the final state of the run at that index: its spec is the parent's with more phases appended, so
the engine can resume it from the parent's last checkpoint and the phase-1 part is trained once per
seed, not once per child (the lifecycle of such a fork on the server: groklab/forks.py).
"""

from __future__ import annotations

from engine.kinds import plan_experiment, request_type
from engine.kinds.base import PlannedRun, geometric_sizes
from engine.kinds.d_crit_search import DCritSearchExperiment, plan_search_probes
from engine.kinds.efficiency import EfficiencyExperiment
from engine.kinds.grokking import GrokkingExperiment
from engine.kinds.method_comparison import MethodComparisonExperiment
from engine.kinds.semi_grokking import SemiGrokkingExperiment
from engine.kinds.sweep import SweepExperiment
from engine.kinds.toy import ToyExperiment
from engine.kinds.ungrokking import UngrokkingExperiment

ExperimentRequest = request_type()
"""Any registered kind's request, told apart by `kind` (validated by the api and `python -m engine`)."""

__all__ = [
    "DCritSearchExperiment", "EfficiencyExperiment", "ExperimentRequest", "GrokkingExperiment", "MethodComparisonExperiment", "PlannedRun",
    "SemiGrokkingExperiment", "SweepExperiment", "ToyExperiment", "UngrokkingExperiment", "geometric_sizes",
    "plan_experiment", "plan_search_probes",
]  # fmt: skip
