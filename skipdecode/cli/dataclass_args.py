"""Command-line flags generated from dataclass configs, as litgpt's CLI does (jsonargparse over
dataclasses): a setting's flag, type, default and help (its field docstring) are written once,
in the config, and the command builds the config back by field name.

Torch-free: every command's parser is built at start-up, the edge ones (`run`) included.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from typing import Any, Callable, Iterable, Mapping, Sequence

_NOUNS = {int: "integers", float: "numbers"}


def comma_list(item: Callable[[str], Any] = str, choices: Sequence | None = None) -> Callable[[str], tuple]:
    """An argparse ``type`` reading a comma-separated list into a tuple.

    >>> comma_list(int)("1,8, 32")
    (1, 8, 32)
    >>> comma_list(str, ("hf", "ort-genai"))("vllm")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: unknown vllm (choose from hf, ort-genai)
    """
    noun = _NOUNS.get(item, "names")

    def parse(text: str) -> tuple:
        try:
            values = tuple(item(x.strip()) for x in text.split(",") if x.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun}, got {text!r}") from None
        bad = [str(v) for v in values if choices is not None and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)} (choose from {', '.join(choices)})")
        return values

    return parse


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the string literal written under the field in the class body (bases first,
    so a subclass's docstring wins), as one line: whitespace collapsed, reST's ``literal`` marks
    dropped (it is read on a terminal).

    Read from the source with ``ast``, as simple-parsing does: Python keeps no such strings.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.replace("``", "").split())
    return docs


def _unwrap_optional(hint):
    """``X | None`` -> X; anything else unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _shown(value) -> str:
    """How a default reads on the command line: tuples as the comma list one would type."""
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def field_help(doc: str, default) -> str:
    """The help of a field's flag: its docstring, then the default where there is one.

    >>> field_help("Examples per micro-batch.", 16)
    'Examples per micro-batch. (default: 16)'
    >>> field_help("Steps over which n_t decays.", None)
    'Steps over which n_t decays.'
    """
    if default is None or default is dataclasses.MISSING or default is False:
        return doc
    return f"{doc} (default: {_shown(default)})"


def add_fields(parser, cls: type, *, only: Iterable[str] | None = None, exclude: Iterable[str] = (),
               choices: Mapping[str, Sequence] | None = None, flags: Mapping[str, str] | None = None,
               metavars: Mapping[str, str] | None = None) -> list[str]:
    """Add one flag per field of the dataclass ``cls`` to ``parser`` (a parser or a group), in
    field order; returns the fields added.

    The flag is ``--field-name`` (or ``flags[name]``) and its destination the field name, so
    :func:`from_args` builds the config by name. Types: bool (``--name``, or ``--no-name`` when
    the default is True), int, float, str, Path, ``X | None``, ``Literal[...]`` (choices) and
    ``tuple[X, ...]`` (a comma-separated list); ``choices[name]`` names the module constant that
    lists a str field's values. A field without a default is a required flag.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    choices, flags, metavars = dict(choices or {}), dict(flags or {}), dict(metavars or {})
    wanted = None if only is None else set(only)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = (set(wanted or ()) | set(exclude) | set(choices) | set(flags) | set(metavars)) - known
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    added = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude or (wanted is not None and f.name not in wanted):
            continue
        if f.name not in docs:
            raise TypeError(f"{cls.__name__}.{f.name} has no docstring (it is the flag's help)")
        default = _default(f)
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        kw: dict[str, Any] = {"dest": f.name, "help": field_help(docs[f.name], default).replace("%", "%%")}
        hint = _unwrap_optional(hints[f.name])
        if hint is bool:
            if default is True:
                flag = "--no-" + flag[2:]
                kw["help"] = f"{docs[f.name]} (default: on; this flag turns it off)".replace("%", "%%")
            parser.add_argument(flag, action="store_false" if default is True else "store_true", **kw)
            added.append(f.name)
            continue
        if typing.get_origin(hint) is typing.Literal:
            kw["choices"] = typing.get_args(hint)
            kw["type"] = type(kw["choices"][0])
        elif typing.get_origin(hint) is tuple:
            item = typing.get_args(hint)[0]
            kw["type"] = comma_list(item, choices.get(f.name))
            kw["metavar"] = "X,Y,..."
        else:
            kw["type"] = hint
            if f.name in choices:
                kw["choices"] = tuple(choices[f.name])
        if f.name in metavars:
            kw["metavar"] = metavars[f.name]
        if default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = default
        parser.add_argument(flag, **kw)
        added.append(f.name)
    return added


def from_args(cls: type, args: argparse.Namespace, **values):
    """``cls`` built by field name from the parsed flags; ``values`` gives (or overrides) the
    fields that have no flag."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    return cls(**{**given, **values})
