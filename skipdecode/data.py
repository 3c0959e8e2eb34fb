"""Task data: E2E CSV or JSONL files to examples, for training, evaluation and calibration alike.

The prompt template lives here and nowhere else: evaluation, calibration and the runtime must feed
the fine-tuned model exactly the prompts it was trained on. Training reads ``Example``s (one
prompt and one target each) and splits them by group; evaluation scores each distinct prompt
against all of its references (``group_examples``). Torch-free: the edge install evaluates too.

>>> format_prompt("name[The Eagle], food[Japanese]")
'name[The Eagle], food[Japanese]\\n'
>>> rows = [Example("mr A", "a cat sat", "mr A", "f:2"), Example("mr B", "a dog", "mr B", "f:3"),
...         Example("mr A", "the cat sat ", "mr A", "f:4")]
>>> [(e.prompt, e.references) for e in group_examples(rows)]
[('mr A', ['a cat sat', 'the cat sat']), ('mr B', ['a dog'])]
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from skipdecode.errors import SkipDecodeError
from skipdecode.io import read_json, read_jsonl

E2E_TEMPLATE = "{mr}\n"
"""E2E prompt: the meaning representation, then a newline; the model writes the sentence."""
JSONL_TEMPLATE = "{prompt}"
"""JSONL prompts are used verbatim: the file carries its own formatting."""
FORMATS = ("e2e", "jsonl")


def format_prompt(mr: str) -> str:
    """The E2E prompt for one meaning representation (training, evaluation and serving)."""
    return E2E_TEMPLATE.format(mr=mr)


@dataclass(frozen=True)
class Example:
    """One prompt and one of its targets (a training pair)."""

    prompt: str
    """The formatted prompt, ready to tokenize."""
    target: str
    group: str
    """Examples that must stay on the same side of a train/held-out split (E2E: the MR)."""
    source: str
    """file:line, for error messages."""


@dataclass(frozen=True)
class EvalExample:
    """A distinct prompt with all of its references: what evaluation generates for and scores."""

    prompt: str
    """What the model is given (template applied)."""
    references: list[str]

    @property
    def input(self) -> str:
        """The input for reading (an E2E MR without the template's trailing newline)."""
        return self.prompt.strip()


# ---- reading ----------------------------------------------------------------------------------
def infer_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "e2e"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    raise SkipDecodeError(f"{path}: cannot tell the format from the suffix; pass --format e2e|jsonl")


def read_e2e(path: str | Path) -> list[Example]:
    """E2E CSV (columns ``mr``, ``ref``). Rows of clean-devel.csv are grouped by ``orig_mr``, the
    devset MR they were corrected from, so a held-out MR never leaks through its twin file."""
    path = Path(path)
    if not path.is_file():
        raise SkipDecodeError(f"{path}: no such file")
    out = []
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise SkipDecodeError(f"{path}:1: empty file (expected a header with columns mr, ref)") from None
        except csv.Error as e:
            raise SkipDecodeError(f"{path}:1: malformed CSV ({e})") from None
        for col in ("mr", "ref"):
            if col not in header:
                raise SkipDecodeError(f"{path}:1: missing column {col!r} (E2E files have columns mr, ref)")
        mr_i, ref_i = header.index("mr"), header.index("ref")
        orig_i = header.index("orig_mr") if "orig_mr" in header else None
        line = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                raise SkipDecodeError(f"{path}:{line}: malformed CSV ({e})") from None
            if row:  # csv skips nothing itself; blank lines come back as []
                cells = {name: (row[i].strip() if i < len(row) else "") for name, i in (("mr", mr_i), ("ref", ref_i))}
                for name, value in cells.items():
                    if not value:
                        raise SkipDecodeError(f"{path}:{line}: missing or empty field {name!r}")
                group = row[orig_i].strip() if orig_i is not None and orig_i < len(row) and row[orig_i].strip() else cells["mr"]
                out.append(Example(format_prompt(cells["mr"]), cells["ref"], group, f"{path}:{line}"))
            line = reader.line_num + 1
    if not out:
        raise SkipDecodeError(f"{path}: no examples")
    return out


def read_jsonl_examples(path: str | Path, prompt_field: str = "prompt", target_field: str = "target") -> list[Example]:
    """One example per target; a target may be a string or a list of strings (several references)."""
    rows = read_jsonl(path, required=(prompt_field, target_field), lists=(target_field,))
    if not rows:
        raise SkipDecodeError(f"{path}: no examples")
    return [Example(JSONL_TEMPLATE.format(prompt=r[prompt_field]), t, r[prompt_field], f"{path}")
            for r in rows for t in (r[target_field] if isinstance(r[target_field], list) else [r[target_field]])]


def load_examples(paths: str | Path | Iterable[str | Path], fmt: str | None = None, prompt_field: str = "prompt",
                  target_field: str = "target") -> list[Example]:
    """Read one file or several (format from ``fmt`` or each file's suffix), in order."""
    out: list[Example] = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        kind = fmt or infer_format(path)
        if kind == "e2e":
            out += read_e2e(path)
        elif kind == "jsonl":
            out += read_jsonl_examples(path, prompt_field, target_field)
        else:
            raise SkipDecodeError(f"unknown format {kind!r} (supported: {', '.join(FORMATS)})")
    return out


def split_heldout(examples: Sequence[Example], fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Hold out whole groups (E2E: whole MRs): ``round(fraction * groups)`` of them, chosen by a
    seeded hash of the group key, so the split does not depend on file order and is the same on
    every machine. Returns (train, held_out), each in input order."""
    if not 0 <= fraction < 1:
        raise SkipDecodeError(f"held-out fraction must be in [0, 1), got {fraction}")
    groups = sorted({e.group for e in examples}, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n = round(fraction * len(groups))
    if fraction > 0 and n == 0:
        n = 1
    if n >= len(groups) and fraction > 0:
        raise SkipDecodeError(f"cannot hold out {fraction:g} of {len(groups)} prompt groups and keep any to train on")
    held = set(groups[:n])
    return [e for e in examples if e.group not in held], [e for e in examples if e.group in held]


# ---- evaluation -------------------------------------------------------------------------------
def group_examples(examples: Sequence[Example], limit: int | None = None) -> list[EvalExample]:
    """Distinct prompts in first-seen order (the first ``limit`` of them), each with the targets
    of all its rows as references (E2E CSVs repeat an MR once per reference)."""
    if limit is not None and limit < 1:
        raise SkipDecodeError(f"--limit must be >= 1, got {limit}")
    refs: dict[str, list[str]] = {}
    for e in examples:
        refs.setdefault(e.prompt, []).append(e.target.strip())
    grouped = [EvalExample(p, r) for p, r in refs.items()]
    return grouped[:limit] if limit else grouped


def read_split(run: str | Path) -> tuple[Path, list, set[str], dict]:
    """A training run's ``RUN/split.json``: (the file, its data files, its held-out groups, the
    format fields ``load_examples`` reads those files with)."""
    file, split = read_json(run, "split.json",
                            "{file}: no such file (a `skipdecode train` run folder with a held-out split)")
    try:
        data, groups = split["data"], set(split["heldout_groups"])
        fields = {"fmt": split.get("format"), "prompt_field": split.get("prompt_field") or "prompt",
                  "target_field": split.get("target_field") or "target"}
    except (KeyError, TypeError) as e:
        raise SkipDecodeError(f"{file}: not a training split ({type(e).__name__}: {e})") from None
    if not groups:
        raise SkipDecodeError(f"{file}: the run held nothing out (train with --holdout)")
    return file, data, groups, fields


def load_heldout(run: str | Path, limit: int | None = None) -> list[EvalExample]:
    """The prompts a training run held out (``RUN/split.json``: its data files and held-out groups),
    references grouped: the dev slice to choose settings on without touching the test set. E2E
    groups are whole MRs (clean-devel rows join the devset MR they were corrected from), so a
    held-out group can bring two spellings of its MR, each scored as its own input."""
    file, data, groups, fields = read_split(run)
    held = [e for e in load_examples(data, **fields) if e.group in groups]
    if not held:
        raise SkipDecodeError(f"{file}: none of its held-out groups are in {', '.join(map(str, data))}")
    return group_examples(held, limit)
