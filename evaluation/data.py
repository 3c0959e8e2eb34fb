"""Evaluation inputs: distinct prompts, each with all of its references.

E2E files are read, and prompts formatted, by the training data module (``training/data.py``
holds the one prompt template), so a fine-tuned model is scored on exactly the prompts it was
trained on. E2E CSVs repeat an MR once per reference; rows with the same prompt are merged.
JSONL targets may be a string or a list of strings (several references); rows with the same
prompt are merged too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from skipdecode.errors import SkipDecodeError
from skipdecode.evaluation.metrics import group_references
from skipdecode.io import read_json, read_jsonl
from skipdecode.training.data import FORMATS, JSONL_TEMPLATE, infer_format, load_examples as load_training, read_e2e

__all__ = ["FORMATS", "Example", "infer_format", "load_examples", "load_heldout", "read_jsonl_rows"]


@dataclass(frozen=True)
class Example:
    prompt: str
    """What the model is given (template applied)."""
    references: list[str]

    @property
    def source(self) -> str:
        """The input for reading (an E2E MR without the template's trailing newline)."""
        return self.prompt.strip()


def read_jsonl_rows(path: str | Path, prompt_field: str = "prompt", target_field: str = "target"
                    ) -> list[tuple[str, str]]:
    """(prompt, reference) per reference; a list-valued target gives one pair per element."""
    rows = []
    for n, row in enumerate(read_jsonl(path, required=(prompt_field,)), 1):
        target = row.get(target_field)
        targets = target if isinstance(target, list) else [target]
        if not targets or not all(isinstance(t, str) and t.strip() for t in targets):
            raise SkipDecodeError(f"{path}: record {n}: {target_field!r} must be a non-empty string "
                                  f"or a list of non-empty strings")
        rows.extend((JSONL_TEMPLATE.format(prompt=row[prompt_field]), t.strip()) for t in targets)
    if not rows:
        raise SkipDecodeError(f"{path}: no examples")
    return rows


def load_examples(path: str | Path, fmt: str | None = None, prompt_field: str = "prompt",
                  target_field: str = "target", limit: int | None = None) -> list[Example]:
    """Distinct prompts in first-seen order (the first ``limit`` of them), references grouped."""
    fmt = fmt or infer_format(path)
    if fmt not in FORMATS:
        raise SkipDecodeError(f"unknown data format {fmt!r} (supported: {', '.join(FORMATS)})")
    if fmt == "e2e":
        rows = [(e.prompt, e.target) for e in read_e2e(path)]
    else:
        rows = read_jsonl_rows(path, prompt_field, target_field)
    return _grouped(rows, limit)


def _grouped(rows: list[tuple[str, str]], limit: int | None) -> list[Example]:
    """Distinct prompts with their references, the first ``limit`` of them."""
    if limit is not None and limit < 1:
        raise SkipDecodeError(f"--limit must be >= 1, got {limit}")
    prompts, refs = group_references([r[0] for r in rows], [r[1] for r in rows])
    examples = [Example(p, r) for p, r in zip(prompts, refs)]
    return examples[:limit] if limit else examples


def load_heldout(run: str | Path, limit: int | None = None) -> list[Example]:
    """The prompts a training run held out (``RUN/split.json``: its data files and held-out groups),
    references grouped: the dev slice to choose settings on without touching the test set. E2E
    groups are whole MRs (clean-devel rows join the devset MR they were corrected from), so a
    held-out group can bring two spellings of its MR, each scored as its own input."""
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
    held = [e for e in load_training(data, **fields) if e.group in groups]
    if not held:
        raise SkipDecodeError(f"{file}: none of its held-out groups are in {', '.join(map(str, data))}")
    return _grouped([(e.prompt, e.target) for e in held], limit)
