"""Flags generated from dataclass configs (skipdecode/cli/dataclass_args.py): help is the field's
docstring, defaults are the field's, every type parses, and the config comes back by name."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from skipdecode.cli.dataclass_args import add_fields, field_docs, field_help, from_args
from skipdecode.runtime.bench import BenchConfig
from skipdecode.training.config import MIXED_PRECISION, TrainConfig

MODES = ("fast", "exact")


@dataclasses.dataclass(frozen=True)
class Example:
    out: Path
    """Where results go."""
    steps: int | None = None
    """Steps to run,
    over two lines."""
    sizes: tuple[int, ...] = (1, 8)
    """Batch sizes, as ``1,8``."""
    rate: float = 0.5
    """A rate."""
    mode: str = "fast"
    """One of MODES."""
    kind: Literal["a", "b"] = "a"
    """A literal's choices."""
    verbose: bool = False
    """Say more."""
    progress: bool = True
    """Show a bar."""


def parser_for(cls=Example, **kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_fields(p, cls, **kw)
    return p


def actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions}


def test_docstrings_are_read_from_the_source():
    assert field_docs(Example) == {
        "out": "Where results go.", "steps": "Steps to run, over two lines.", "sizes": "Batch sizes, as 1,8.",
        "rate": "A rate.", "mode": "One of MODES.", "kind": "A literal's choices.", "verbose": "Say more.",
        "progress": "Show a bar."}


def test_help_is_the_docstring_and_defaults_are_the_fields():
    acts = actions(parser_for(choices={"mode": MODES}))
    assert acts["out"].help == "Where results go." and acts["out"].required
    assert acts["steps"].help == "Steps to run, over two lines." and acts["steps"].default is None
    assert acts["rate"].help == "A rate. (default: 0.5)" and acts["rate"].default == 0.5
    assert acts["sizes"].help == "Batch sizes, as 1,8. (default: 1,8)" and acts["sizes"].default == (1, 8)
    assert acts["mode"].choices == MODES and acts["kind"].choices == ("a", "b")
    assert acts["verbose"].option_strings == ["--verbose"] and acts["verbose"].default is False
    assert acts["progress"].option_strings == ["--no-progress"] and acts["progress"].default is True


def test_every_type_parses_and_the_config_is_built_by_name(tmp_path):
    p = parser_for(choices={"mode": MODES})
    args = p.parse_args(["--out", str(tmp_path), "--steps", "3", "--sizes", "1, 4,32", "--rate", "2e-1",
                         "--mode", "exact", "--kind", "b", "--verbose", "--no-progress"])
    assert from_args(Example, args) == Example(tmp_path, 3, (1, 4, 32), 0.2, "exact", "b", True, False)
    defaults = from_args(Example, p.parse_args(["--out", "x"]))
    assert defaults == Example(Path("x"))
    assert from_args(Example, p.parse_args(["--out", "x"]), rate=0.25).rate == 0.25


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "1,a"], "expected comma-separated integers, got '1,a'"),
    (["--mode", "slow"], "invalid choice: 'slow'"),
    (["--steps", "2.5"], "invalid int value: '2.5'"),
    ([], "the following arguments are required: --out"),
])
def test_bad_values_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        parser_for(choices={"mode": MODES}).parse_args(["--out", "x", *argv] if argv else [])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_only_exclude_renamed_flags_and_unknown_names():
    p = parser_for(only=("rate", "mode"), flags={"rate": "--r"}, metavars={"rate": "R"})
    assert set(actions(p)) == {"help", "rate", "mode"}
    assert p.parse_args(["--r", "3"]).rate == 3.0 and actions(p)["rate"].metavar == "R"
    assert "steps" not in actions(parser_for(exclude=("steps",)))
    with pytest.raises(TypeError, match="Example has no field nope"):
        parser_for(exclude=("nope",))

    @dataclasses.dataclass
    class Undocumented:
        x: int = 1

    with pytest.raises(TypeError, match="Undocumented.x has no docstring"):
        parser_for(Undocumented)


def test_field_help():
    assert field_help("Doc.", None) == "Doc." and field_help("Doc.", False) == "Doc."
    assert field_help("Doc.", (1.0, 2.5)) == "Doc. (default: 1,2.5)"


@pytest.mark.parametrize("cls, choices", [(TrainConfig, {"mixed_precision": MIXED_PRECISION}), (BenchConfig, {})])
def test_the_project_configs_document_every_field(cls, choices):
    """Every field of a config the CLI generates flags from has a docstring, and its flag's default
    is the field's own."""
    acts = actions(parser_for(cls, choices=choices))
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        assert acts[f.name].help.startswith(docs[f.name]), f.name
        if f.default is not dataclasses.MISSING:
            assert acts[f.name].default == f.default, f.name
