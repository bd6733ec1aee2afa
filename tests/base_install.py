"""Makes a Python process see only what the README's set-up command installs.

The suite runs in a venv with the `test` extra, which a user's `bin/groklab up` install lacks; a
command that imports a test-only package would pass here and fail for the user. A process started
with `tests.services.base_install_env` imports this module at start-up (through a one-line
`sitecustomize` that env puts first on PYTHONPATH), and every module that
BASE_INSTALL_BLOCKED_MODULES names (the top-level modules of the distributions outside groklab's
base dependencies) then fails to import as it would there. Children inherit the environment, so
`groklab up`'s api and workers see the same install.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

_BLOCKED = frozenset(filter(None, os.environ.get("BASE_INSTALL_BLOCKED_MODULES", "").split(",")))


class _BaseInstallOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname.partition(".")[0] in _BLOCKED:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (not installed by groklab's base dependencies)", name=fullname
            )
        return None


def install() -> None:
    if _BLOCKED:
        sys.meta_path.insert(0, _BaseInstallOnly())
