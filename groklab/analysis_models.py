"""The shapes of the analyses the API returns (GET /v1/runs/{id}/analysis and
GET /v1/experiments/{id}/analysis), as pydantic models: the routes declare them as response models,
so the OpenAPI schema documents every field and the schema-driven fuzz test checks every response;
the client (groklab/client/) parses the JSON it reads into them.

Only pydantic here (no numpy, torch or SQLAlchemy): the client imports this module. The functions
that compute the analyses are groklab/analysis.py (and a kind's own module for its section,
e.g. groklab/method_comparison.py); a finished run's analysis is kept in the answer cache as this
module's JSON, which is the same JSON the functions' dicts were before these models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

RunLabel = Literal[
    "not_converged",
    "kept",
    "partially_ungrokked",
    "ungrokked",
    "generalised_without_delay",
    "grokked",
    "semi_grokked",
    "memorised",
]
"""A run's label; the rules are groklab.analysis.label_run's docstring (and docs/concepts.md)."""


class Thresholds(BaseModel):
    """Every cut-off the labels and estimates use; all settable per request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memorised_acc: float = Field(0.99, gt=0, le=1, description="train_acc that counts as memorised")
    generalised_acc: float = Field(0.95, gt=0, le=1, description="test_acc that counts as generalised")
    no_delay_factor: float = Field(
        2.0, ge=1, description="generalisation within this factor of the memorisation step is no delay"
    )
    ungrokked_below: float = Field(0.5, gt=0, le=1, description="final test_acc of an ungrokked run")
    semi_min: float = Field(0.3, ge=0, le=1, description="lowest final test_acc of a semi-grokked run")
    semi_rise: float = Field(0.1, ge=0, le=1, description="rise of test_acc above its value at memorisation for semi-grokking")
    loss_target: float = Field(0.01, gt=0, description="train_loss at which a run's param_norm_at_loss_target is read")
    efficiency_loss: float = Field(
        1e-4, gt=0, description="train_loss at which the efficiency analysis compares converged circuits' norms"
    )
    circuit_formed_loss: float = Field(
        0.1, gt=0, description="restricted_loss at or below which the Fourier circuit counts as formed"
    )

    @model_validator(mode="after")
    def _check(self) -> Thresholds:
        if self.semi_min >= self.generalised_acc:
            raise ValueError("semi_min: must be below generalised_acc")
        return self


# --- one run -------------------------------------------------------------------------------------


class RunAnalysis(BaseModel):
    """Milestones, final values and the label of one run, read off its metric series. Steps are
    training steps; a milestone is null when the run never reached it."""

    memorisation_step: int | None = Field(description="First evaluated step with train_acc >= memorised_acc.")
    generalisation_step: int | None = Field(description="First evaluated step with test_acc >= generalised_acc.")
    grokking_delay: int | None = Field(
        description="generalisation_step - memorisation_step; for a run whose last phase trains on a subset D' "
        "(ungrokking's phase 2), that phase's own (null when it started generalised)."
    )
    circuit_formation_step: int | None = Field(
        description="First step with restricted_loss <= circuit_formed_loss (the Fourier circuit formed)."
    )
    circuit_lead_steps: int | None = Field(description="generalisation_step - circuit_formation_step.")
    final_step: int | None = Field(description="The last evaluated step.")
    final_train_acc: float | None
    final_test_acc: float | None
    max_test_acc: float | None
    test_acc_at_memorisation: float | None
    last_phase_start_step: int | None = Field(description="Where the last phase starts; null for one phase.")
    test_acc_at_last_phase_start: float | None
    final_param_norm: float | None
    loss_target_step: int | None = Field(description="The step at which param_norm_at_loss_target was read.")
    param_norm_at_loss_target: float | None = Field(description="param_norm at the first step with train_loss <= loss_target.")
    converged_train_loss: float | None = Field(description="Median of the last 5 evaluations (as the other converged_*).")
    converged_param_norm: float | None
    converged_train_acc: float | None
    converged_test_acc: float | None
    param_norm_drift: float | None = Field(
        description="|final param_norm - param_norm at 3/4 of the run| / final param_norm: how far from settled."
    )
    train_size: int = Field(description="D: the last phase's training set size.")
    weight_decay: float = Field(description="The weight decay in force during the last phase.")
    seed: int
    data_seed: int
    label: RunLabel


class RunAnalysisResponse(RunAnalysis):
    """GET /v1/runs/{id}/analysis: the run's analysis with the thresholds it used."""

    run_id: int
    status: str
    thresholds: Thresholds


# --- an experiment -------------------------------------------------------------------------------


class AccuracyPoint(BaseModel):
    """Mean final test accuracy over the analysed runs at one (role, weight decay, D)."""

    role: str
    weight_decay: float
    train_size: int
    mean: float
    std: float = Field(description="Sample standard deviation over seeds; 0 for one run.")
    n: int = Field(description="Runs averaged.")


class DCritEstimate(BaseModel):
    """D where mean final test accuracy first rises through the level, with a bootstrap interval
    over seeds (each resample draws seeds with replacement at every D)."""

    d_crit: float | None = Field(description="Linear interpolation between the two sizes around the crossing.")
    reason: str | None = Field(description="Why d_crit is null.")
    interval: list[float] | None = Field(description="2.5 and 97.5 percentiles of the resamples that cross.")
    crossing_share: float | None = Field(description="Share of the resamples whose curve crosses.")


class DCritAtWeightDecay(DCritEstimate):
    weight_decay: float


class DCritByRole(BaseModel):
    pooled: DCritEstimate = Field(description="Over every weight decay's runs together.")
    by_weight_decay: list[DCritAtWeightDecay]


class WeightDecayCollapse(BaseModel):
    """The largest spread of the per-weight-decay mean accuracies at a D they share (the paper
    predicts the curves overlap: a small gap)."""

    max_gap: float | None
    train_size: int | None = Field(description="The D of the largest gap.")
    weight_decays: list[float] | None = Field(description="The lowest and highest curve at that D.")
    reason: str | None = Field(description="Why max_gap is null.")


class SweepPoint(BaseModel):
    train_loss: float | None = Field(description="The run's converged train loss.")
    param_norm: float | None = Field(description="The run's converged parameter norm.")
    param_norm_drift: float | None


class EfficiencyPoint(BaseModel):
    """One circuit's parameter norm at the efficiency loss at one D, read off its weight-decay sweep."""

    train_size: int
    param_norm_at_loss: float | None = Field(description="Least-squares line of norm vs log10(loss), read at the loss.")
    n: int = Field(description="Runs in the sweep.")
    reason: str | None = Field(description="Why param_norm_at_loss is null.")
    max_param_norm_drift: float | None
    sweep: list[SweepPoint] = Field(description="The sweep's runs by converged train loss.")


class ExcludedRun(BaseModel):
    run_id: int
    reason: str


class Efficiency(BaseModel):
    """Each circuit's parameter norm at one train loss vs D (the paper's Fig. 3) and the D where the
    memorising circuit's norm rises through the generalising one's: a second D_crit estimate."""

    loss: float = Field(description="The train loss the norms are compared at (thresholds.efficiency_loss).")
    memorise: list[EfficiencyPoint] = Field(description="C_mem: random-label runs that fit their training set.")
    generalise: list[EfficiencyPoint] = Field(description="C_gen: real-label runs that generalised.")
    excluded: list[ExcludedRun] = Field(description="Runs that had not converged to their circuit.")
    d_crit: float | None
    reason: str | None = Field(description="Why d_crit is null.")


class SeedsUsed(BaseModel):
    model: list[int] = Field(description="The runs' model seeds.")
    data: list[int] = Field(description="The runs' data seeds.")
    data_varied: bool


class RunRow(BaseModel):
    """One flat row per run (also the CSV's rows); the analysis fields are null until it succeeded."""

    id: int
    index: int
    status: str
    role: str
    search_round: int | None
    seed: int
    data_seed: int
    train_size: int
    weight_decay: float
    label: RunLabel | None
    memorisation_step: int | None
    generalisation_step: int | None
    grokking_delay: int | None
    circuit_formation_step: int | None
    circuit_lead_steps: int | None
    total_steps: int
    final_step: int | None
    final_train_acc: float | None
    final_test_acc: float | None
    max_test_acc: float | None
    test_acc_at_last_phase_start: float | None
    final_param_norm: float | None
    param_norm_at_loss_target: float | None


# --- the kinds' sections -------------------------------------------------------------------------


class SearchProbe(BaseModel):
    round: int
    train_size: int
    mean_final_test_acc: float
    n: int


class GridCost(BaseModel):
    """A geometric grid over the request's bracket that reaches the same relative tolerance."""

    sizes: int
    runs: int
    run_steps: int


class DCritSearch(BaseModel):
    """A d_crit_search's state: the bracket, the estimate over its probes, its probes by round and
    its cost beside a grid's."""

    side: Literal["scratch", "ungrokking"]
    level: float
    bracket: list[int] = Field(description="The tightest [low, high] the probed means allow.")
    bracket_ratio: float = Field(description="high / low.")
    ended: bool
    end_reason: str | None
    rounds: int
    estimate: DCritEstimate
    probes: list[SearchProbe]
    assumed: str = Field(description="The request's bracket ends are assumed, not trained.")
    probe_runs: int
    probe_run_steps: int
    grid_at_same_tolerance: GridCost


class SeedSteps(BaseModel):
    seed: int
    run_id: int
    steps: int = Field(description="First evaluated step at the accuracy level, or the budget when censored.")
    censored: bool = Field(description="The run never reached the level: `steps` is its budget, a lower bound.")


Side = Literal["baseline", "method"]


class Configuration(BaseModel):
    """One (side, learning rate, weight decay) over its seeds."""

    side: Side
    learning_rate: float
    weight_decay: float
    untuned: bool = Field(description="The base spec's own learning rate and weight decay.")
    budget: int = Field(description="The runs' step budget.")
    seeds: list[SeedSteps] = Field(description="Each succeeded run's steps to generalise.")
    median_steps: float | None = Field(description="Median over seeds; None before any run succeeded.")
    censored: bool = Field(description="The median is a lower bound: at least half the seeds never generalised.")


class SpeedUp(BaseModel):
    baseline: Configuration | None
    method: Configuration | None
    speed_up: float | None = Field(description="baseline median steps / method median steps.")
    interval: list[float] | None = Field(description="95% bootstrap interval over seeds.")
    bound: Literal["lower", "upper", "unknown"] | None = Field(
        description="When a median is censored the speed-up is a bound: lower (only the baseline's), upper "
        "(only the method's) or unknown (both)."
    )
    reason: str | None = None


class MethodComparison(BaseModel):
    level: float = Field(description="The test accuracy that counts as generalised.")
    configurations: list[Configuration]
    best: dict[Side, Configuration | None] = Field(
        description="Each side's configuration with the fewest median steps (ties: the fewest mean steps)."
    )
    tuned: SpeedUp = Field(description="The method's best against the baseline's best.")
    untuned: SpeedUp = Field(description="Both sides at the base spec's own learning rate and weight decay.")
    resamples: int


KIND_SECTIONS = ("search", "method_comparison")
"""The experiment analysis' optional sections, one per kind that adds one (groklab/kinds.py)."""


class ExperimentAnalysis(BaseModel):
    """GET /v1/experiments/{id}/analysis: accuracy vs D, D_crit, weight-decay collapse and efficiency
    over the runs that succeeded, every run's row, and the section of the experiment's kind.

    A kind's section is present only for that kind (`search` for a d_crit_search,
    `method_comparison` for a method_comparison). A kind registered elsewhere (a plug-in) may add a
    section this model does not name: it passes through untyped until it gets a field here.
    """

    model_config = ConfigDict(extra="allow")

    experiment_id: int
    thresholds: Thresholds
    complete: bool = Field(description="Every run has finished.")
    missing_run_ids: list[int] = Field(description="Runs not finished yet.")
    excluded_run_ids: list[int] = Field(description="Runs that failed or were cancelled: left out of the estimates.")
    analysed_runs: int = Field(description="Runs that succeeded (analysed).")
    accuracy_vs_train_size: list[AccuracyPoint]
    d_crit: dict[str, DCritByRole] = Field(description="D_crit estimates by the runs' role.")
    weight_decay_collapse: dict[str, WeightDecayCollapse] = Field(description="By the runs' role.")
    efficiency: Efficiency
    seeds: SeedsUsed
    runs: list[RunRow]
    search: DCritSearch | None = Field(None, description="d_crit_search only: the search's state.")
    method_comparison: MethodComparison | None = Field(None, description="method_comparison only: the comparison.")

    @model_serializer(mode="wrap")
    def _omit_absent_sections(self, handler: SerializerFunctionWrapHandler):  # noqa: ANN202
        # Another kind's experiment has no such key at all (as before these models), not a null.
        # No return annotation: one would replace the model's serialization schema in OpenAPI.
        data = handler(self)
        for name in KIND_SECTIONS:
            if data.get(name) is None:
                data.pop(name, None)
        return data
