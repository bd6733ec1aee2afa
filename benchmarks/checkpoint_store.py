"""Checkpoint store: write and read time of the paper model's checkpoint on every backend.

`python -m benchmarks.checkpoint_store [--repeats N]` serialises the P = 113 transformer (d_model
128, 4 heads of 32, d_mlp 512) with its AdamW state as the engine checkpoints it, then times
CheckpointStore.put (a new step each time) and get (the latest, SHA-256 checked) on SQLite,
PostgreSQL (a database it creates and drops next to GROKLAB_TEST_PG_ADMIN, default
postgresql://postgres@127.0.0.1:5432/test), a folder, and S3 on a private SeaweedFS server
(tests/seaweedfs.py). Ratios are against the folder, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch

from engine.checkpoint import Checkpoint
from engine.model import build_model
from engine.spec import RunSpec, TaskSpec
from groklab.checkpoint_format import encode
from groklab.settings import Settings
from groklab.store import runs as run_store
from groklab.store.checkpoint_store import CheckpointStore
from groklab.store.database import create_database, drop_database, session_scope
from groklab.store.leases import Lease, claim_run
from groklab.store.migrate import upgrade

ADMIN_URL = os.environ.get("GROKLAB_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
SPEC = RunSpec(task=TaskSpec(p=113, train_size=3830))
BUCKET = "groklab-bench"


def paper_checkpoint_bytes() -> bytes:
    """The bytes a worker stores (groklab.checkpoint_format.encode) for the paper model after one AdamW step."""
    model = build_model(SPEC)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=1.0)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    optimizer.step()  # creates exp_avg and exp_avg_sq for every parameter
    ckpt = Checkpoint(
        step=1, phase=0, train_idx=torch.randperm(113 * 113)[:3830], model=model.state_dict(),
        optimizer=optimizer.state_dict(), batch_rng=torch.Generator().get_state(), data_key="{}",
    )  # fmt: skip
    return encode(ckpt)


def running_run(database_url: str) -> Lease:
    """A run, created and claimed for an hour: checkpoints are written under its lease."""
    with session_scope(database_url) as session:
        run_id = (
            run_store.create_experiment(session, name="bench", spec={}, runs=[run_store.NewRun(spec={}, total_steps=1)])
            .runs[0]
            .id
        )
    with session_scope(database_url) as session:
        lease = claim_run(session, run_id, worker="bench", lease_seconds=timedelta(hours=1).total_seconds())
    assert lease is not None
    return lease


def time_put_and_get(settings: Settings, data: bytes, repeats: int) -> tuple[float, float]:
    """Median seconds of a put and of a get."""
    upgrade(settings.resolved_database_url)
    store = CheckpointStore.from_settings(settings)
    lease = running_run(settings.resolved_database_url)
    puts, gets = [], []
    for step in range(repeats + 1):  # the first round warms connections up and is not counted
        started = time.perf_counter()
        store.put(lease, step, data)
        put_done = time.perf_counter()
        assert store.get(lease.run_id)[1] == data
        if step:
            puts.append(put_done - started)
            gets.append(time.perf_counter() - put_done)
    return statistics.median(puts), statistics.median(gets)


@contextmanager
def backends(folder: Path) -> Iterator[dict[str, Callable[[], Settings]]]:
    from tests.local_seaweedfs import SeaweedFS  # needs the test extras; running_run does not

    pg_name, pg_url = create_database(ADMIN_URL, prefix="groklab_bench")
    seaweedfs = SeaweedFS()
    try:
        seaweedfs.start()
        seaweedfs.client().create_bucket(Bucket=BUCKET)
        sqlite_url = f"sqlite:///{folder / 'groklab.db'}"
        yield {
            "file": lambda: Settings(database_url=sqlite_url, checkpoint_url=(folder / "blobs").as_uri()),
            "sqlite": lambda: Settings(database_url=sqlite_url),
            "postgresql": lambda: Settings(database_url=pg_url),
            "s3 (SeaweedFS)": lambda: Settings(database_url=pg_url, **seaweedfs.store_settings(BUCKET)),
        }
    finally:
        seaweedfs.remove()
        drop_database(ADMIN_URL, pg_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    data = paper_checkpoint_bytes()
    print(f"paper model checkpoint: {len(data) / 1e6:.2f} MB (weights, AdamW state, training indices)")
    print(f"{'backend':<16}{'put ms':>9}{'get ms':>9}{'put / file':>12}{'get / file':>12}")
    with tempfile.TemporaryDirectory(prefix="groklab-bench-") as folder, backends(Path(folder)) as settings_of:
        results = {name: time_put_and_get(settings(), data, args.repeats) for name, settings in settings_of.items()}
    file_put, file_get = results["file"]
    for name, (put, get) in results.items():
        print(f"{name:<16}{put * 1e3:>9.1f}{get * 1e3:>9.1f}{put / file_put:>12.2f}{get / file_get:>12.2f}")


if __name__ == "__main__":
    main()
