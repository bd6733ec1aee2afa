"""A typed Python client of the groklab HTTP API: submit, wait, read metrics and analyses, load
trained models, cancel, delete.

    from groklab.client import Client
    client = Client()                       # GROKLAB_URL, GROKLAB_API_KEY, or the arguments
    experiment = client.submit("examples/tiny.json")
    runs = client.wait(experiment)          # a progress bar per run while they train
    rows = client.metrics(runs[0], ["test_acc"], max_points=500)
    frame = client.metrics(runs[0], ["test_acc"], as_dataframe=True)   # needs pandas
    model = client.load_model(runs[0])     # the trained nn.Module, from its stored checkpoint
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from groklab.client.errors import ApiError, ClientError, ServerUnreachable, ServiceUnavailable, Unauthorized
from groklab.lifecycle import FINISHED_STATUSES

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_RETRY_SECONDS = 600.0
log = logging.getLogger(__name__)


_READING_POSTS = frozenset({"/v1/metrics/query", "/v1/experiments/plan"})
"""POSTs that change nothing (a query body, a dry run): retried like reads."""


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def _outage_wait(state: RetryCallState) -> float:
    """Exponential backoff from 0.5 s to 30 s, never shorter than the api's Retry-After."""
    backoff = min(30.0, 0.5 * 2 ** (state.attempt_number - 1))
    error = state.outcome.exception() if state.outcome else None
    asked = error.retry_after if isinstance(error, ServiceUnavailable) and error.retry_after else 0.0
    return max(backoff, min(asked, 60.0))


@dataclass(frozen=True)
class Experiment:
    """An experiment as the api last described it: its runs' ids, their counts by status, its spec."""

    id: int
    name: str | None
    run_ids: list[int]
    status_counts: dict[str, int]
    spec: dict[str, Any] = field(repr=False)
    created_at: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    note: str | None = None

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Experiment:
        return cls(
            body["id"], body.get("name"), list(body["run_ids"]), dict(body["status_counts"]), body["spec"],
            body.get("created_at"), dict(body.get("tags") or {}), body.get("note"),
        )  # fmt: skip


@dataclass(frozen=True)
class Run:
    """A run as the api last described it: status, step of total_steps, latest metrics, its spec."""

    id: int
    experiment_id: int
    status: str
    step: int
    total_steps: int
    latest_metrics: dict[str, float | None]
    error: str | None
    spec: dict[str, Any] = field(repr=False)
    role: str | None = None
    """The run's part in its experiment (phase1, phase2, probe, ...)."""
    search_round: int | None = None
    """A d_crit_search probe's round."""
    started_at: str | None = None
    finished_at: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    note: str | None = None
    created_at: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Run:
        return cls(
            body["id"], body["experiment_id"], body["status"], body["step"], body["total_steps"],
            dict(body.get("latest_metrics") or {}), body.get("error"), body["spec"],
            body.get("role"), body.get("search_round"), body.get("started_at"), body.get("finished_at"),
            dict(body.get("tags") or {}), body.get("note"), body.get("created_at"),
        )  # fmt: skip


RunRef = Run | int
ExperimentRef = Experiment | int


def _id(ref: Run | Experiment | int) -> int:
    return ref if isinstance(ref, int) else ref.id


def load_spec(path: str | Path) -> dict[str, Any]:
    """An experiment spec from a .json or .yaml/.yml file."""
    path = Path(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        spec = yaml.safe_load(text)
    else:
        spec = json.loads(text)
    if not isinstance(spec, dict):
        raise ClientError(f"{path}: a spec is a JSON/YAML object, not {type(spec).__name__}")
    return spec


class Client:
    """A groklab server seen from Python: one HTTP connection pool, a key, and outage retries.

    Every method that takes a run or an experiment accepts its id, a `Run` or an `Experiment`.
    Use it as a context manager, or call `close()`, to release the connection pool.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry_seconds: float | None = None,
    ) -> None:
        """retry_seconds (GROKLAB_RETRY_SECONDS, default 600): how long reads, and submissions
        (each sent with an Idempotency-Key, so a retry cannot make a second experiment), wait out
        an outage: the api answering 503 (its database or broker is down), or the api itself
        unreachable after this client has reached it once. A first contact that fails is not an
        outage but a wrong URL or a server not started, and fails at once. 0 turns retrying off."""
        self.base_url = (base_url or os.environ.get("GROKLAB_URL") or DEFAULT_URL).rstrip("/")
        api_key = api_key or os.environ.get("GROKLAB_API_KEY") or None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        if retry_seconds is None:
            retry_seconds = float(os.environ.get("GROKLAB_RETRY_SECONDS") or DEFAULT_RETRY_SECONDS)
        self.retry_seconds = retry_seconds
        self._reached = False  # the api answered this client once: unreachable now is an outage

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call of the api; a read, or a POST that carries an Idempotency-Key, is retried
        through an outage for up to retry_seconds, with backoff and one line to say so."""
        retryable = method == "GET" or path in _READING_POSTS or "Idempotency-Key" in (kwargs.get("headers") or {})
        if not retryable or self.retry_seconds <= 0:
            return self._send(method, path, **kwargs)
        started = time.monotonic()
        retrying = Retrying(
            retry=retry_if_exception(self._is_outage),
            wait=_outage_wait,
            stop=stop_after_delay(self.retry_seconds),
            before_sleep=lambda state: self._waiting(state, method, path),
            reraise=True,
        )
        response = retrying(self._send, method, path, **kwargs)
        if retrying.statistics.get("attempt_number", 1) > 1:
            log.warning("groklab: the api at %s answers again (waited %.0f s)", self.base_url, time.monotonic() - started)
        return response

    def _is_outage(self, exc: BaseException) -> bool:
        return isinstance(exc, ServiceUnavailable) or (isinstance(exc, ServerUnreachable) and self._reached)

    def _waiting(self, state: RetryCallState, method: str, path: str) -> None:
        if state.attempt_number == 1:  # one line per outage, not one per try
            log.warning(
                "groklab: %s; retrying %s %s for up to %.0f s (GROKLAB_RETRY_SECONDS)",
                state.outcome.exception() if state.outcome else "outage", method, path, self.retry_seconds,
            )  # fmt: skip

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(
                f"cannot reach the groklab api at {self.base_url} ({exc}); is it running "
                "(`groklab up`), and is GROKLAB_URL right?"
            ) from exc
        self._reached = True
        if response.status_code == 401:
            raise Unauthorized(
                f"the api at {self.base_url} refused the request: {_detail(response)}. Pass an API "
                "key (--api-key or GROKLAB_API_KEY); `groklab keys create --owner NAME` makes one."
            )
        if response.status_code == 503:
            raise ServiceUnavailable(503, _detail(response), retry_after=_retry_after(response))
        if response.status_code >= 400:
            raise ApiError(response.status_code, _detail(response))
        return response

    def submit(self, spec: Mapping[str, Any] | str | Path, *, idempotency_key: str | None = None) -> Experiment:
        """Store and queue an experiment: a spec mapping, or the path of a JSON or YAML file.
        Without an idempotency_key one is made, so that a retry through an outage cannot
        store the experiment twice."""
        body = dict(spec) if isinstance(spec, Mapping) else load_spec(spec)
        headers = {"Idempotency-Key": idempotency_key or f"groklab-client-{uuid.uuid4()}"}
        return Experiment.from_json(self._request("POST", "/v1/experiments", json=body, headers=headers).json())

    def plan(self, spec: Mapping[str, Any] | str | Path) -> dict[str, Any]:
        """A dry run of submit: {kind, name, runs, total_steps}, or the ApiError submit would raise
        (422 naming the field, 429 over a limit); nothing is stored."""
        body = dict(spec) if isinstance(spec, Mapping) else load_spec(spec)
        return self._request("POST", "/v1/experiments/plan", json=body).json()

    def whoami(self) -> dict[str, Any]:
        """{owner, scopes, auth_required} of this client's key; Unauthorized for a refused key."""
        return self._request("GET", "/v1/whoami").json()

    def usage(self) -> dict[str, Any]:
        """The owner's stored and planned bytes, runs and points, and its storage bound (GET /v1/usage)."""
        return self._request("GET", "/v1/usage").json()

    def experiment(self, experiment: ExperimentRef) -> Experiment:
        """One experiment with its run ids and run counts by status."""
        return Experiment.from_json(self._request("GET", f"/v1/experiments/{_id(experiment)}").json())

    def experiments(self, limit: int = 50) -> list[Experiment]:
        """The caller's experiments, newest first (the first page of at most `limit`)."""
        page = self._request("GET", "/v1/experiments", params={"limit": limit}).json()
        return [Experiment.from_json(item) for item in page["items"]]

    def run(self, run: RunRef) -> Run:
        """One run: status, step of total_steps, latest metrics and status history."""
        return Run.from_json(self._request("GET", f"/v1/runs/{_id(run)}").json())

    def runs(
        self,
        experiment: ExperimentRef | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        label: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
        tags: Mapping[str, str | None] | None = None,
        sort: str | None = None,
        as_dataframe: bool = False,
    ) -> Any:
        """Runs (of one experiment, or all of the owner's) filtered by spec fields
        (where={"task.train_size": 1000}), analysis label, status and tags ({key: value}, or
        {key: None} for any value), sorted by a run column (sort="-final_test_acc"); read page by
        page. A list of Run, or with as_dataframe=True a pandas DataFrame: one row a run, its
        columns, final_<series> and the spec's fields as dotted columns (spec.task.train_size).
        """
        params: dict[str, Any] = {"limit": 1000}
        if experiment is not None:
            params["experiment_id"] = _id(experiment)
        if where:
            params["where"] = json.dumps(dict(where))
        for name, value in (("label", label), ("status", status)):
            if value is not None:
                params[name] = value if isinstance(value, str) else ",".join(value)
        if tags:
            params["tag"] = ",".join(key if value is None else f"{key}={value}" for key, value in tags.items())
        if sort:
            params["sort"] = sort
        items: list[dict[str, Any]] = []
        while True:
            page = self._request("GET", "/v1/runs", params=params).json()
            items.extend(page["items"])
            if not page.get("next_cursor"):
                break
            params["cursor"] = page["next_cursor"]
        if not as_dataframe:
            return [Run.from_json(item) for item in items]
        import pandas as pd

        rows = []
        for item in items:
            row = {k: v for k, v in item.items() if k not in ("spec", "latest_metrics", "latest_metrics_step")}
            row.update({f"final_{name}": value for name, value in item["latest_metrics"].items()})
            row.update(flat_fields(item["spec"], "spec"))
            rows.append(row)
        return pd.DataFrame(rows)

    def tag(
        self,
        target: RunRef | ExperimentRef,
        tags: Mapping[str, str | None] | None = None,
        *,
        note: str | None = None,
        experiment: bool = False,
    ) -> dict[str, Any]:
        """Set tags on a run (or with experiment=True, or an Experiment, on an experiment); a None
        value removes its key. `note` replaces the note ("" clears it); None leaves it. The
        run's or experiment's body as the api answers it."""
        body: dict[str, Any] = {}
        if tags is not None:
            body["tags"] = dict(tags)
        if note is not None:
            body["note"] = note
        kind = "experiments" if experiment or isinstance(target, Experiment) else "runs"
        return self._request("PATCH", f"/v1/{kind}/{_id(target)}", json=body).json()

    def cancel(self, run: RunRef) -> Run:
        """Cancel a run (a queued one never starts, a running one stops within about a second,
        keeping its metrics) and return it as it is now; ApiError 409 for a finished run."""
        self._request("POST", f"/v1/runs/{_id(run)}/cancel")
        return self.run(run)

    def continue_run(
        self,
        run: RunRef,
        steps: int,
        *,
        weight_decay: float | None = None,
        subset_size: int | None = None,
        stop_when: list[dict[str, Any]] | None = None,
    ) -> Run:
        """Train a succeeded run for `steps` more (a new phase, optionally with its own weight
        decay or on a subset D'); it is queued again and resumes from its final checkpoint."""
        body: dict[str, Any] = {"steps": steps, "weight_decay": weight_decay, "subset_size": subset_size}
        body = {key: value for key, value in body.items() if value is not None}
        if stop_when:
            body["stop_when"] = stop_when
        return Run.from_json(self._request("POST", f"/v1/runs/{_id(run)}/continue", json=body).json())

    def retry(self, experiment: ExperimentRef) -> Experiment:
        """Re-queue the experiment's failed and cancelled runs, each from its latest checkpoint."""
        return Experiment.from_json(self._request("POST", f"/v1/experiments/{_id(experiment)}/retry").json())

    def delete_experiment(self, experiment: ExperimentRef, *, timeout: float = 120.0, poll_seconds: float = 1.0) -> None:
        """Delete the experiment with its runs, metrics and checkpoints, cancelling its runs.

        The api refuses (409) while runs are still running, having asked them to stop; this
        retries until they have, and raises ApiError for any other refusal or after `timeout`.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._request("DELETE", f"/v1/experiments/{_id(experiment)}")
                return
            except ApiError as exc:
                stopping = exc.status == 409 and any(run.status == "running" for run in self.runs(experiment))
                if not stopping or time.monotonic() > deadline:
                    raise
            time.sleep(poll_seconds)

    def checkpoints(self, run: RunRef) -> list[dict[str, Any]]:
        """The run's stored checkpoints: {step, bytes, sha256, kept, created_at}, in step order."""
        return self._request("GET", f"/v1/runs/{_id(run)}/checkpoints").json()["checkpoints"]

    def fourier(self, run: RunRef, step: int | None = None) -> dict[str, Any]:
        """The Fourier view of a stored checkpoint (the latest when None): {run_id, step, frequencies,
        embed_power, logit_power, key_frequencies, kept_steps}; transformer runs on add/subtract."""
        return self._request(
            "GET", f"/v1/runs/{_id(run)}/fourier", params={"step": "latest" if step is None else int(step)}
        ).json()

    def download_checkpoint(self, run: RunRef, step: int | None = None, *, optimizer: bool = False) -> bytes:
        """A safetensors file: the model's weights at `step` (the latest when None), or with
        optimizer=True the whole checkpoint the run resumes from."""
        path = f"/v1/runs/{_id(run)}/checkpoints/{'latest' if step is None else int(step)}"
        return self._request("GET", path, params={"optimizer": optimizer}).content

    def load_model(self, run: RunRef, step: int | None = None, format: str = "engine") -> Any:
        """The run's model with its weights at `step` (the latest when None), on the CPU: ready for
        analysis in a notebook. Needs torch. `format`:

        - "engine": the engine's nn.Module (engine.model), in eval mode.
        - "transformer_lens" (transformer runs; needs the transformer-lens extra, TransformerLens
          4.x): the same model over all three positions as a TransformerLens HookedRootModule
          (groklab.client.lens.TransformerLensView), in eval mode: run_with_cache, run_with_hooks.
        - "hooked_transformer" (transformer runs; torch alone): groklab.client.lens.HookedTransformerWeights,
          a (state_dict, config) pair for TransformerLens 2.x/3.x:
          HookedTransformer(HookedTransformerConfig(**config)).load_state_dict(state_dict).

        docs/transformer_lens.md has the details.
        """
        from safetensors.torch import load

        from engine.model import build_model
        from engine.spec import RunSpec

        formats = ("engine", "transformer_lens", "hooked_transformer")
        if format not in formats:
            raise ValueError(f"format: {format!r} is not one of {', '.join(map(repr, formats))}")
        spec = RunSpec.model_validate((run if isinstance(run, Run) else self.run(run)).spec)
        if format != "engine" and spec.model.kind != "transformer":
            raise ValueError(f"format: only transformer runs have the {format!r} view; this run's model is {spec.model.kind!r}")
        model = build_model(spec)
        model.load_state_dict(load(self.download_checkpoint(run, step)))
        if format == "engine":
            return model.eval()
        from groklab.client import lens

        if format == "transformer_lens":
            return lens.transformer_lens_view(model)
        return lens.hooked_transformer_weights(model)

    def analysis(self, experiment: ExperimentRef) -> dict[str, Any]:
        """Accuracy vs D, D_crit with its interval, and each run's label (see the HTTP API)."""
        return self._request("GET", f"/v1/experiments/{_id(experiment)}/analysis").json()

    def run_analysis(self, run: RunRef) -> dict[str, Any]:
        """One run's milestones (memorisation, circuit formation, generalisation), final values
        and label, computed from its stored series with the default thresholds."""
        return self._request("GET", f"/v1/runs/{_id(run)}/analysis").json()

    def metrics(
        self,
        run: RunRef | Sequence[RunRef] | None = None,
        names: Iterable[str] | None = None,
        *,
        max_points: int | None = None,
        start_step: int = 0,
        end_step: int | None = None,
        as_dataframe: bool = False,
        experiment: ExperimentRef | None = None,
        where: Mapping[str, Any] | None = None,
        group_by: Iterable[str] | None = None,
    ) -> Any:
        """Rows of the long layout: {run_id, name, step, value} points, or with max_points at most
        that many {run_id, name, step_start, step_end, count, min, max, mean, last} buckets a series.
        With group_by (spec paths or "label"; needs max_points), one row per group, name and
        bucket: {group, name, step_start, step_end, n, mean, min, max} over the group's runs.

        The runs: `run` (one or a list), or an `experiment` narrowed by `where`. A list of dicts,
        or a pandas DataFrame with as_dataframe=True (a group's values as columns). Raw points are
        read page by page until the end.
        """
        query: dict[str, Any] = {"start_step": start_step}
        if run is not None:
            runs = run if isinstance(run, Sequence) else [run]
            query["run_ids"] = [_id(r) for r in runs]
        if experiment is not None:
            query["experiment_id"] = _id(experiment)
        if where:
            query["where"] = dict(where)
        if group_by is not None:
            query["group_by"] = list(group_by)
        if names is not None:
            query["names"] = list(names)
        if end_step is not None:
            query["end_step"] = end_step
        if max_points is not None:
            query["max_points"] = max_points
        rows: list[dict[str, Any]] = []
        while True:
            page = self._request("POST", "/v1/metrics/query", json=query).json()
            rows.extend(page["rows"])
            if not page.get("next_cursor"):
                break
            query["cursor"] = page["next_cursor"]
        if not as_dataframe:
            return rows
        import pandas as pd

        if group_by is not None:
            rows = [{**row["group"], **{k: v for k, v in row.items() if k != "group"}} for row in rows]
        return pd.DataFrame(rows)

    def metrics_csv(self, run: RunRef, names: Iterable[str] | None = None, *, max_points: int | None = None) -> Iterator[str]:
        """The run's rows as CSV text, one page at a time (the header only on the first)."""
        query: dict[str, Any] = {"run_ids": [_id(run)], "format": "csv"}
        if names is not None:
            query["names"] = list(names)
        if max_points is not None:
            query["max_points"] = max_points
        first = True
        while True:
            response = self._request("POST", "/v1/metrics/query", json=query)
            text = response.text
            yield text if first else text.split("\n", 1)[1]
            first = False
            cursor = response.headers.get("X-Next-Cursor")
            if not cursor:
                return
            query["cursor"] = cursor

    def reproduce(
        self,
        scale: str | None = None,
        *,
        folder: str | Path = "groklab-report",
        seeds: int | None = None,
        out: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> Path:
        """`groklab reproduce`: submit the paper's experiments at `scale` (or re-attach to `folder`'s
        with resume), wait, and write the HTML report (groklab/client/reproduce.py); its path."""
        # One way only: the reproduce module builds on the client and imports only its errors.
        # Imported here, on use, so that importing the client does not load the report.
        from groklab.client.reproduce import reproduce

        report, _ = reproduce(
            self, scale=scale, seeds=seeds, folder=Path(folder), out=Path(out) if out else None,
            resume=resume, progress=progress,
        )  # fmt: skip
        return report

    def wait(
        self,
        target: RunRef | ExperimentRef | Sequence[RunRef],
        *,
        progress: bool = True,
        timeout: float | None = None,
        poll_seconds: float = 1.0,
    ) -> Run | list[Run]:
        """Block until the run (or every run of the experiment, or of the list) has finished.

        With progress, a bar per run shows its step, ETA and latest test accuracy. Returns the
        finished run, or the list of them for an experiment or a list.
        """
        if isinstance(target, Experiment):
            run_ids, single = list(target.run_ids), False
        elif isinstance(target, (Run, int)):
            run_ids, single = [_id(target)], True
        else:
            run_ids, single = [_id(r) for r in target], False
        runs = watch_runs(self, run_ids, progress=progress, timeout=timeout, poll_seconds=poll_seconds)
        return runs[0] if single else runs


def watch_runs(
    client: Client,
    run_ids: Sequence[int],
    *,
    progress: bool = True,
    timeout: float | None = None,
    poll_seconds: float = 1.0,
) -> list[Run]:
    """Poll the runs until all have finished, drawing a rich progress bar per run when asked."""
    deadline = None if timeout is None else time.monotonic() + timeout
    columns = (
        TextColumn("run {task.fields[run_id]:>5}"),
        TextColumn("{task.fields[status]:<9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("test_acc {task.fields[test_acc]}"),
    )
    with Progress(*columns, disable=not progress, transient=False) as bars:
        tasks: dict[int, Any] = {}
        while True:
            runs = [client.run(run_id) for run_id in run_ids]
            for run in runs:
                test_acc = run.latest_metrics.get("test_acc")
                fields = {"status": run.status, "test_acc": "–" if test_acc is None else f"{test_acc:.3f}"}
                if run.id not in tasks:
                    tasks[run.id] = bars.add_task("", total=run.total_steps, run_id=run.id, **fields)
                bars.update(tasks[run.id], completed=run.step, **fields)
            if all(run.finished for run in runs):
                return runs
            if deadline is not None and time.monotonic() > deadline:
                pending = [run.id for run in runs if not run.finished]
                raise TimeoutError(f"runs {pending} have not finished within {timeout}s")
            time.sleep(poll_seconds)


def flat_fields(value: Any, prefix: str) -> dict[str, Any]:
    """{"spec.task.train_size": 1000, "spec.phases.0.steps": 300, ...} of a nested spec."""
    if isinstance(value, Mapping):
        return {k: v for key, inner in value.items() for k, v in flat_fields(inner, f"{prefix}.{key}").items()}
    if isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
        return {k: v for i, inner in enumerate(value) for k, v in flat_fields(inner, f"{prefix}.{i}").items()}
    return {prefix: value}


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body)
    return str(body)
