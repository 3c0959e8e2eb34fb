"""Checkpoints in transformers' layout, written atomically, plus the trainer state for --resume.

A checkpoint folder holds config.json, model.safetensors, the tokenizer files and
generation_config.json (what ``AutoModelForCausalLM.from_pretrained`` and ``load_model`` read),
skipdecode.json (the schedule it was trained under) and trainer_state.pt (optimizer, LR schedule,
data position and RNG states). It is written into a temporary folder that is then renamed, so a
crash or Ctrl-C never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

import torch

from skipdecode.errors import SkipDecodeError
from skipdecode.io import atomic_dir
from skipdecode.models.loading import copy_tokenizer
from skipdecode.schedule import Schedule, write_schedule_file

TRAINER_STATE = "trainer_state.pt"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
FINAL = "final"
BEST = "best"  # --keep-best: the lowest held-out dev loss so far (weights only, not resumable)


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def state_dict_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """HF names, contiguous CPU tensors; a tied lm_head is dropped (safetensors refuses shared
    tensors, and transformers re-ties it from ``tie_word_embeddings``)."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


def save_checkpoint(model: torch.nn.Module, tokenizer_dir: Path, dst: Path, info: dict,
                    trainer_state: dict | None = None) -> Path:
    """Write ``model`` (unwrapped) into ``dst`` atomically. ``info`` goes into skipdecode.json
    and must hold ``{"schedule": schedule.to_dict(), ...}``. A full disk is a one-line
    ``SkipDecodeError`` (the earlier checkpoints stay as they were)."""
    dst = Path(dst)
    try:
        _write(model, tokenizer_dir, dst, info, trainer_state)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as "unexpected pos ..."
        free, need = free_bytes(dst), checkpoint_bytes(model, trainer_state is not None)
        if getattr(e, "errno", None) != errno.ENOSPC and free >= 1.25 * need:  # not (evidently) a full disk
            raise
        raise SkipDecodeError(
            f"{dst}: could not write the checkpoint: {free / 1e9:.2f} GB free on its disk, a checkpoint takes "
            f"~{need / 1e9:.2f} GB ({type(e).__name__}); earlier checkpoints are intact: free space (or lower "
            "--keep-checkpoints) and re-run with --resume") from None
    return dst


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds ``path`` (its nearest existing folder: it may not be made yet)."""
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def checkpoint_bytes(model: torch.nn.Module, with_state: bool = True) -> int:
    """About what one checkpoint takes: the weights, and AdamW's two moments per parameter."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = sum(p.numel() * 8 for p in model.parameters() if p.requires_grad) if with_state else 0
    return weights + moments


def disk_warning(out: Path, model: torch.nn.Module, saves: int, keep: int) -> str | None:
    """A warning when ``out``'s disk may not hold the checkpoints on it at once: ``saves`` more
    numbered ones of which ``keep`` are kept (0: all), the one being written and the final one."""
    at_once = (min(keep, saves) if keep else saves) + 2
    size, free = checkpoint_bytes(model), free_bytes(out)
    if free >= at_once * size:
        return None
    return (f"{free / 1e9:.1f} GB free under {out}, and up to {at_once} checkpoints of ~{size / 1e9:.2f} GB "
            "may be on disk at once")


def _write(model, tokenizer_dir: Path, dst: Path, info: dict, trainer_state: dict | None) -> None:
    from safetensors.torch import save_file

    with atomic_dir(dst) as tmp:
        config = dict(model.config.hf)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(state_dict_for_save(model), tmp / "model.safetensors", metadata={"format": "pt"})
        if "tokenizer.json" not in copy_tokenizer(Path(tokenizer_dir), tmp):
            raise RuntimeError(f"{tokenizer_dir}: no tokenizer.json to put beside the checkpoint")
        if not (tmp / "generation_config.json").exists():
            gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        raw = info["schedule"]
        write_schedule_file(tmp, Schedule.from_dict(raw) if raw else None, {k: v for k, v in info.items() if k != "schedule"})
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every resumable checkpoint in ``out``, oldest first."""
    found = []
    for path in Path(out).glob("*"):
        if not (path / TRAINER_STATE).exists():
            continue
        m = CHECKPOINT_RE.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
        elif path.name == FINAL:
            found.append((int(load_trainer_state(path)["step"]), path))
    return sorted(found)


def load_trainer_state(path: Path) -> dict:
    file = Path(path) / TRAINER_STATE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise SkipDecodeError(f"{file}: cannot read trainer state ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def prune_checkpoints(out: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` numbered checkpoints (``final`` is never removed)."""
    numbered = [(s, p) for s, p in list_checkpoints(out) if p.name != FINAL]
    for _, path in numbered[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
