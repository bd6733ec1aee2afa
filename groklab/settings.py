"""The one settings class: every knob of the api, the worker and the CLI, read from GROKLAB_* env."""

from __future__ import annotations

import ipaddress
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.spec import DEFAULT_MAX_RUNS


class InsecureConfig(RuntimeError):
    """Auth turned off on an address other machines can reach."""


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def comma_list(text: str | None) -> list[str] | None:
    """'a, b,,c' -> ['a', 'b', 'c']; None when nothing was given. How groklab reads a list from an
    environment variable, a query parameter or a CLI flag."""
    if not text:
        return None
    return [item.strip() for item in text.split(",") if item.strip()]


GPU_ID = re.compile(r"^(\d+|(GPU|MIG)-[0-9A-Za-z-]+)$")
"""What CUDA_VISIBLE_DEVICES takes: an index as nvidia-smi numbers the GPUs, or a GPU or MIG UUID."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GROKLAB_", extra="ignore")

    data_dir: Path = Field(
        Path("groklab-data"),
        description="Embedded mode's home: SQLite file, filesystem broker, checkpoints.",
    )
    database_url: str | None = Field(None, description="SQLAlchemy URL; default is a SQLite file in data_dir.")
    broker_url: str | None = Field(None, description="Celery broker URL; default is kombu's filesystem broker in data_dir.")
    queue_name: str = Field("groklab", description="Celery queue that carries training tasks.")
    checkpoint_url: str | None = Field(
        None,
        description="Where checkpoints are stored: file:///path, s3://bucket/prefix, or none for "
        "the database itself (so every host that reaches the database reaches them).",
    )
    checkpoint_minutes: float | None = Field(
        10.0,
        gt=0,
        description="A training run also checkpoints after this many minutes without one, whatever "
        "its step cadence, so a lost worker costs at most that long; none turns it off.",
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, SeaweedFS); none is AWS.")
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Worker processes `groklab up` starts: default one per GPU of `gpus` (all it sees "
        "when neither is set), or on a host without a GPU one per two cores (at most 16); more than "
        "the GPUs share them round-robin, fewer is an error.",
    )
    gpus: str | None = Field(
        None,
        description="GPUs `groklab up` pins its workers to, one each as its CUDA_VISIBLE_DEVICES: "
        "indices as nvidia-smi numbers them or GPU UUIDs (0,1,2,3), or all (every GPU visible; an "
        "error if there is none). Unset: `all` when a GPU is visible and `workers` is unset, else "
        "workers are not pinned, and all train on the first GPU.",
    )
    device: str = Field("auto", description="Training device for workers: auto, cpu or cuda.")
    tf32: bool = Field(
        True,
        description="Workers let CUDA float32 matmuls and convolutions use TF32 (10-bit mantissa "
        "inputs, several times faster on Ampere and later); set once at worker start. No effect on CPUs.",
    )
    torch_threads: int | None = Field(None, ge=1, description="Intra-op threads per worker; default splits the cores.")
    worker_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="The CPU priority (nice value) a worker process takes at start: training yields "
        "the cores to the api, the database and the broker where they share a host (the embedded "
        "default, a laptop); 0 keeps the priority the worker was started with.",
    )
    max_runs_per_experiment: int = Field(DEFAULT_MAX_RUNS, ge=1)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    metric_flush_seconds: float = Field(1.0, gt=0, description="A worker writes buffered metric points at least this often.")
    metric_flush_points: int = Field(5000, ge=1)
    cancel_poll_seconds: float = Field(1.0, gt=0)
    lease_seconds: float = Field(
        60.0, gt=0, description="A running run whose worker has not renewed its lease for this long is re-queued."
    )
    reconcile_seconds: float = Field(
        10.0, ge=0, description="How often the api's reconciler re-queues lost runs; 0 turns it off."
    )
    requeue_grace_seconds: float = Field(
        30.0, ge=0, description="A queued run is re-sent only if its last message is older than this."
    )
    ensemble_size: int = Field(
        1,
        ge=1,
        le=1024,
        description="Runs of one experiment that share a model shape train as one batched ensemble "
        "of up to this many on one worker. 1 (no packing) suits CPU workers, where the matmuls "
        "already fill the cores; 64 suits GPU workers.",
    )
    broker_visibility_timeout: int = Field(
        7 * 24 * 3600, ge=60, description="Redis redelivers an unacknowledged task after this long."
    )
    auth: Literal["auto", "required", "off"] = Field(
        "auto",
        description="API keys: 'auto' requires them unless `host` is a loopback address; 'off' "
        "(loopback only) lets every request act as owner 'local'.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the api (comma-separated or a JSON list); "
        "none by default, so no CORS headers are sent.",
    )
    max_queued_steps_per_owner: int = Field(
        2_000_000_000,
        ge=1,
        description="An owner's queued and running runs may hold at most this many optimizer steps.",
    )
    max_points_per_run: int = Field(
        100_000,
        ge=1,
        description="Evaluations plus train_loss points one run may log (a log-spaced eval_schedule draws any run within it).",
    )
    max_kept_checkpoints_per_run: int = Field(
        1_000, ge=0, description="Checkpoints one run may keep for download (checkpoint_keep_every)."
    )
    max_stored_bytes_per_owner: int = Field(
        100_000_000_000,
        ge=1,
        description="Bytes of metric points and checkpoints an owner's runs may store, counting what "
        "queued and running runs will still store (GET /v1/usage).",
    )
    checkpoint_orphan_seconds: float = Field(
        3600.0,
        ge=1,
        description="A checkpoint blob that no index row names (its writer died between the two) is "
        "deleted by the reconciler once it is this old; a writer that cannot index its blob within "
        "half this long writes it again.",
    )
    orphan_sweep_seconds: float = Field(
        900.0, gt=0, description="How often the reconciler looks for such blobs (it lists the whole store)."
    )
    submissions_per_minute: int = Field(60, ge=1, description="Experiments one owner may submit in any 60 seconds.")
    idempotency_key_hours: float = Field(
        24.0, gt=0, description="How long an Idempotency-Key replays its experiment; after that it may be reused."
    )
    short_run_parameter_steps: int = Field(
        2_000_000_000,
        ge=0,
        description="A run whose total steps x model parameters is at most this is short: it goes "
        "to the priority queue, and a long run yields a busy worker to it at a checkpoint "
        "(groklab/fair_share.py). 2e9 is ~9,500 steps of the paper transformer at P=47 (8,800 at P=113); 0 turns "
        "fair share off (first in, first out).",
    )
    short_run_grace_seconds: float = Field(
        3.0,
        ge=0,
        description="A short run that has waited this long for a worker makes a long run yield to it. "
        "An idle worker takes a message within the filesystem broker's 1 s poll (at once with Redis), "
        "well inside it.",
    )
    yield_after_seconds: float = Field(
        30.0,
        ge=0,
        description="A run that resumed from a checkpoint trains at least this long before it yields "
        "to a short run again, so a stream of short runs cannot hold a long one back for ever.",
    )
    max_tags: int = Field(32, ge=1, le=1000, description="Tags one experiment or run may carry.")
    max_tag_length: int = Field(200, ge=1, le=10_000, description="Characters in one tag's value.")
    max_note_length: int = Field(10_000, ge=1, description="Characters in one experiment's or run's note.")
    max_metric_groups: int = Field(
        500, ge=1, description="Groups one metric query's group_by may form (a 200-run sweep over D' x weight decay needs ~50)."
    )
    answer_cache_bytes: int = Field(
        256 * 1024 * 1024,
        ge=0,
        description="Compressed bytes of answers over finished runs kept in the database (runs' "
        "analyses, downsampled metric queries; groklab/store/answer_cache.py); the oldest go first. "
        "A 200-run experiment page keeps ~1.5 MB. 0: nothing is kept.",
    )
    max_listed_runs: int = Field(
        10_000,
        ge=1,
        description="Runs GET /v1/runs filters by spec, label or sorts in one request (before paging); "
        "narrow a larger listing with experiment_id or status.",
    )
    worker_metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of a worker's Prometheus /metrics server; 0 turns it off."
    )

    @field_validator("gpus", mode="before")
    @classmethod
    def _normalise_gpus(cls, value: object) -> object:
        """'0, 1' -> '0,1', 'ALL' -> 'all', '' -> None; an id CUDA_VISIBLE_DEVICES would not take
        is an error here, not a worker that silently sees no GPU."""
        if not isinstance(value, str):
            return value
        if not value.strip():
            return None
        if value.strip().lower() == "all":
            return "all"
        ids = comma_list(value) or []
        bad = [gpu for gpu in ids if not GPU_ID.match(gpu)]
        if bad:
            raise ValueError(f"not a GPU id: {', '.join(bad)}; give indices (0,1,2,3), GPU UUIDs, or all")
        if len(set(ids)) != len(ids):
            raise ValueError(f"a GPU is listed twice in {value!r}; list each GPU once")
        return ",".join(ids)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return comma_list(text) or []
        return value

    def auth_required(self) -> bool:
        """Raises InsecureConfig for auth 'off' on a non-loopback host, so such a server never starts."""
        if self.auth == "required":
            return True
        if is_loopback(self.host):
            return False
        if self.auth == "off":
            raise InsecureConfig(
                f"GROKLAB_AUTH=off is only allowed when the api is bound to a loopback address, not "
                f"{self.host!r}: anyone who can reach it could submit and cancel work. Create a "
                "key with `groklab keys create --owner NAME` and use GROKLAB_AUTH=auto or required."
            )
        return True

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'groklab.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
