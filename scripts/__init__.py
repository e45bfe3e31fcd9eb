"""Measurement scripts. Each first checks what it needs (the dev dependencies, built files) and says in
one line what to run when something is missing, instead of a traceback part-way through."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# requirements-dev.txt's packages the scripts import (by module name): `make install-dev` installs them
DEV_MODULES = ("requests", "pandas", "matplotlib")


def need(*files: Path, build: str = "", modules: tuple[str, ...] = DEV_MODULES) -> None:
    """Exit with one line naming the first missing module or file, and `build`, the command that makes the files."""
    script = Path(sys.argv[0]).name
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise SystemExit(f"{script}: needs the dev dependencies (no module {module!r}): run `make install-dev`")
    for file in files:
        if not Path(file).exists():
            shown = Path(file).resolve().relative_to(ROOT) if Path(file).resolve().is_relative_to(ROOT) else file
            raise SystemExit(f"{script}: needs {shown}, which does not exist: run `{build}`")
