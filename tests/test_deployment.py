"""docker-compose.yml and the Dockerfile name real entry points and real settings (Docker can't run here)."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import yaml

from groklab.settings import Settings
from worker.celery_config import TRAIN_RUNS_TASK

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _resolve(target: str) -> object:
    module, _, attribute = target.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, attribute) if attribute else loaded


def _check_command(command: list[str]) -> None:
    program = command[0]
    if program == "uvicorn":
        app = _resolve(command[1])
        assert callable(app), command
    elif program == "celery":
        assert command[1] == "-A" and command[3] == "worker", command
        celery_app = _resolve(command[2] + ":app")
        for included in celery_app.conf.include:
            importlib.import_module(included)
        assert TRAIN_RUNS_TASK in celery_app.tasks, command
    elif program == "groklab":
        main = _resolve(SCRIPTS["groklab"])
        assert callable(main)
        subcommands = re.findall(r'add_parser\(\s*"(\w+)"', (ROOT / "groklab" / "cli.py").read_text())
        assert command[1] in subcommands, command
    else:
        raise AssertionError(f"unexpected program {program!r} in {command}")


def test_every_groklab_service_command_names_a_real_entry_point() -> None:
    groklab_services = {name: svc for name, svc in COMPOSE["services"].items() if svc.get("build")}
    assert set(groklab_services) == {"migrate", "api", "worker"}
    for service in groklab_services.values():
        _check_command(service["command"])
    _check_command(["uvicorn", "api.main:app"])  # the Dockerfile's default command


def test_the_api_and_workers_come_back_and_say_whether_they_reach_both_servers() -> None:
    for name in ("api", "worker"):
        service = COMPOSE["services"][name]
        assert service["restart"] == "unless-stopped", name
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and test[1:3] == ["groklab", "check"], test
        _check_command(test[1:])


def test_every_groklab_environment_variable_is_a_setting() -> None:
    settings_names = {f"GROKLAB_{name.upper()}" for name in Settings.model_fields}
    for name, service in COMPOSE["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("GROKLAB_"):
                assert variable in settings_names, f"{name}: {variable} is not a groklab setting"
    assert {"GROKLAB_DATABASE_URL", "GROKLAB_BROKER_URL"} <= set(COMPOSE["x-groklab-env"])


def test_worker_reserves_a_gpu_and_can_scale() -> None:
    deploy = COMPOSE["services"]["worker"]["deploy"]
    devices = deploy["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "replicas" in deploy


def test_the_worker_for_another_gpu_is_the_worker_pinned_to_that_gpu() -> None:
    """The commented worker-gpu1 example, uncommented as the comment above it says."""
    text = (ROOT / "docker-compose.yml").read_text()
    lines = text.splitlines()
    start = lines.index("  # worker-gpu1:")
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("  #")), len(lines))
    uncommented = ["  " + line[len("  # ") :] for line in lines[start:end]]
    services = yaml.safe_load("\n".join(lines[:start] + uncommented + lines[end:]))["services"]
    worker, example = services["worker"], services["worker-gpu1"]
    assert {k: v for k, v in example.items() if k != "deploy"} == {k: v for k, v in worker.items() if k != "deploy"}
    [pinned] = example["deploy"]["resources"]["reservations"]["devices"]
    [first] = worker["deploy"]["resources"]["reservations"]["devices"]
    assert (first["device_ids"], pinned["device_ids"]) == (["0"], ["1"])
    assert pinned["driver"] == "nvidia" and "gpu" in pinned["capabilities"]


def test_migrate_runs_before_api_and_workers() -> None:
    for name in ("api", "worker"):
        depends = COMPOSE["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_dockerfile_copies_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("api", "worker", "engine", "groklab", "migrations"):
        assert f"COPY {package} " in dockerfile
