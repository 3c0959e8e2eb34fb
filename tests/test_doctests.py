"""Every doctest of the package runs, and none is silently skipped: a module whose source shows
an example (``>>>``) must have examples attempted, and the package must have some at all."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def package_modules() -> list[str]:
    """Every module of the packages pyproject.toml installs (their folders, not site-packages)."""
    packages = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"]
    names = set(packages)
    for package in packages:
        names.update(m.name for m in pkgutil.iter_modules(importlib.import_module(package).__path__, package + "."))
    return sorted(names)


MODULES = package_modules()


def import_or_skip(name: str):
    """The module, or a skip when it needs an optional dependency that is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] != "skipdecode":
            pytest.skip(f"{name} needs {e.name}")
        raise


def run_doctests(module) -> doctest.TestResults:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(module):
        runner.run(test)
    return runner.summarize(verbose=False)


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name):
    module = import_or_skip(name)
    result = run_doctests(module)
    assert result.failed == 0
    if ">>> " in Path(module.__file__).read_text(encoding="utf-8"):
        assert result.attempted > 0, f"{name} shows examples that doctest does not find"


# modules whose examples once went unrun: no test named them
ONCE_UNRUN = ("skipdecode.runtime.feeds", "skipdecode.runtime.costmodel", "skipdecode.runtime.bench",
              "skipdecode.calibration.divergence")


def test_the_package_has_doctests():
    assert set(ONCE_UNRUN) <= set(MODULES)  # the discovery reaches the folders beside skipdecode/
    attempted = {}
    for name in MODULES:
        try:
            attempted[name] = run_doctests(importlib.import_module(name)).attempted
        except ModuleNotFoundError:  # an optional dependency; test_module_doctests says which
            continue
    assert sum(attempted.values()) > 0
    assert all(attempted[name] > 0 for name in ONCE_UNRUN), {name: attempted[name] for name in ONCE_UNRUN}
