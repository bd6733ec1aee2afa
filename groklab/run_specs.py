"""A stored run's spec as a RunSpec, parsed once per process.

A run's spec is stored as JSON and read by many paths of one process (dispatch packs it, the
worker trains it, fair share sizes it, the analyses, the Fourier view, a continue, a search's
next round). Each gets the parsed spec here: keyed on the run's id and a digest of its spec's
JSON, so a spec that changed (a continued run's new phase) is parsed again, and bounded, least
recently used first out. RunSpec is frozen, so one parsed spec is safely shared.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

from engine.spec import RunSpec

CACHED_SPECS = 4096
"""Specs kept per process: a worker's pack and an experiment's analysis of thousands of runs fit;
each is a few kilobytes."""


class StoredRun(Protocol):
    id: int
    spec: Any


_specs: OrderedDict[tuple[int, bytes], RunSpec] = OrderedDict()
_lock = threading.Lock()  # the api answers requests on a thread pool


def run_spec(run: StoredRun) -> RunSpec:
    """The run's spec, parsed (ValidationError as RunSpec.model_validate for a bad one)."""
    return spec_of(run.id, run.spec)


def spec_of(run_id: int, spec: Mapping[str, Any]) -> RunSpec:
    """The spec stored for run `run_id`, parsed at most once per process while it is unchanged."""
    digest = hashlib.blake2b(json.dumps(spec, sort_keys=True).encode(), digest_size=16).digest()
    key = (run_id, digest)
    with _lock:
        parsed = _specs.get(key)
        if parsed is not None:
            _specs.move_to_end(key)
            return parsed
    parsed = RunSpec.model_validate(spec)
    with _lock:
        _specs[key] = parsed
        while len(_specs) > CACHED_SPECS:
            _specs.popitem(last=False)
    return parsed
