"""Skip-aware fine-tuning: each batch runs the training forward under a SkipDecode schedule, so
the upper layers learn to continue from the lower layers' output of earlier positions.

The loop is written against ``accelerate.Accelerator`` (one process on a CPU; DDP and mixed
precision under ``accelerate launch``). Everything that decides the next step (weights,
optimizer, LR schedule, data position, RNG) is saved in checkpoints, so a resumed run takes the
same steps as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from skipdecode.errors import SkipDecodeError
from skipdecode.models.loading import copy_tokenizer
from skipdecode.io import atomic_write_text
from skipdecode.models import load_model
from skipdecode.training import checkpoint as ckpt
from skipdecode.training.config import TrainConfig
from skipdecode.data import Example
from skipdecode.training.batches import BatchStream, collate, tokenize
from skipdecode.training.evaluate import batch_loss, dev_loss, distill_kl, greedy_samples, spread
from skipdecode.training.schedules import ScheduleSampler

LOG_FILE = "log.jsonl"
# settings that decide the data order: a resumed run must keep them
RESUME_FIXED = ("batch_size", "grad_accum", "seed")


@dataclass
class TrainResult:
    step: int
    checkpoint: Path | None
    interrupted: bool
    train_loss: float | None
    """Mean training loss over the last logging interval."""


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up reaching the peak at step ``warmup``, then linear decay (never exactly 0).

    >>> [round(lr_factor(s, 2, 6), 2) for s in range(6)]
    [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    """
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only (not norms, biases), the usual AdamW recipe."""
    decay, rest = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@contextlib.contextmanager
def graceful_interrupt(signals=(signal.SIGINT, signal.SIGTERM)):
    """The first Ctrl-C (or SIGTERM) sets a flag the loop checks between steps; it then writes
    a checkpoint and stops. A second Ctrl-C interrupts at once, without one."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum, frame):
        flag["stop"] = True
        print(f"\nskipdecode train: {signal.Signals(signum).name}: finishing this step and writing a checkpoint "
              "(Ctrl-C again to quit without one)", file=sys.stderr)
        for s, h in previous.items():
            signal.signal(s, h)

    for s in signals:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class Trainer:
    def __init__(self, cfg: TrainConfig, model_spec: str, train_examples: Sequence[Example],
                 eval_examples: Sequence[Example], make_sampler: Callable[[int, object], ScheduleSampler],
                 distill_from: str | None = None, resume: bool = False, extra_info: dict | None = None):
        """``make_sampler(num_layers, trained_schedule)`` builds the schedule sampler once the
        model's depth is known; ``extra_info`` is recorded in each checkpoint's skipdecode.json."""
        from accelerate import Accelerator

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.extra_info = dict(extra_info or {})
        mp = cfg.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        self.accelerator = Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())
        self.is_main = self.accelerator.is_main_process
        self.resume_state = None
        found = ckpt.list_checkpoints(self.out) if self.out.exists() else []
        if resume:
            if not found:
                raise SkipDecodeError(f"--resume: no checkpoint with {ckpt.TRAINER_STATE} in {self.out}")
            self.resume_path = found[-1][1]
            self.resume_state = ckpt.load_trainer_state(self.resume_path)
            model_spec = str(self.resume_path)
        elif found:
            raise SkipDecodeError(f"{self.out} already holds checkpoints: pass --resume to continue, "
                                  f"or choose another --out")

        loaded = load_model(model_spec)
        self.tokenizer = loaded.tokenizer
        # one copy of the tokenizer in the run folder: the folder a run resumed from may be pruned
        self.tokenizer_dir = self.out / "tokenizer"
        if self.is_main and not (self.tokenizer_dir / "tokenizer.json").exists():
            self.tokenizer_dir.mkdir(parents=True, exist_ok=True)
            copy_tokenizer(loaded.path, self.tokenizer_dir)
        self.model = loaded.model.train()
        self.sampler = make_sampler(self.model.num_layers, loaded.schedule)
        self.base_model = self.extra_info.get("base_model", model_spec)

        self.pairs, dropped = tokenize(train_examples, self.tokenizer, cfg.max_length)
        if not self.pairs:
            raise SkipDecodeError(f"no training example fits in --max-length {cfg.max_length} tokens")
        if dropped and self.is_main:
            print(f"skipdecode train: dropped {dropped} examples longer than {cfg.max_length} tokens", file=sys.stderr)
        eval_pool = spread(list(eval_examples), cfg.eval_examples)
        self.eval_pairs, _ = tokenize(eval_pool, self.tokenizer, cfg.max_length)
        seen, firsts = set(), []
        for e in eval_examples:  # one sample per distinct prompt
            if e.prompt not in seen:
                seen.add(e.prompt)
                firsts.append(e)
        self.sample_examples = spread(firsts, cfg.eval_samples)

        self.stream = BatchStream([len(p) + len(t) for p, t in self.pairs], cfg.batch_size, cfg.seed)
        per_epoch = math.ceil(len(self.stream) / self.accelerator.num_processes)
        self.total_steps = cfg.total_steps(per_epoch)
        self.rng = random.Random(cfg.seed)
        torch.manual_seed(cfg.seed)

        device = self.accelerator.device
        self.model.to(device)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, cfg.warmup_steps, self.total_steps))
        self.step = 0
        self.last_stats: dict = {}
        if self.resume_state is not None:
            self._restore(self.resume_state)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)

        self.teacher = None
        if distill_from:
            teacher = load_model(distill_from, device=str(device))
            if teacher.model.config.vocab_size != self.model_config.vocab_size:
                raise SkipDecodeError(f"--distill-from {distill_from}: vocabulary {teacher.model.config.vocab_size} "
                                      f"differs from the student's {self.model_config.vocab_size}")
            self.teacher = teacher.model.eval().requires_grad_(False)

    # ---- state --------------------------------------------------------------------------------
    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def model_config(self):
        return self.unwrapped.config

    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "stream": self.stream.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "rng": self.rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
            "sampler": self.sampler.to_dict(),
            "num_train": len(self.pairs),
            "total_steps": self.total_steps,
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def _restore(self, state: dict) -> None:
        saved = state["config"]
        changed = [k for k in RESUME_FIXED if saved.get(k) != getattr(self.cfg, k)]
        if changed:
            raise SkipDecodeError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in changed)} differ from "
                                  f"the checkpoint's ({', '.join(f'{k}={saved.get(k)}' for k in changed)})")
        if state["num_train"] != len(self.pairs):
            raise SkipDecodeError(f"--resume: {len(self.pairs)} training examples, the checkpoint was trained on "
                                  f"{state['num_train']} (give the same --data)")
        if state["sampler"] != self.sampler.to_dict():
            raise SkipDecodeError("--resume: the schedule flags differ from the checkpoint's (skipdecode.json)")
        self.step = int(state["step"])
        self.stream.load_state_dict(state["stream"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["lr_scheduler"])
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def info(self) -> dict:
        return {**self.sampler.to_dict(), "base_model": self.base_model, "step": self.step,
                "distill_from": self.extra_info.get("distill_from"),
                **{k: v for k, v in self.extra_info.items() if k not in ("base_model", "distill_from")}}

    def save(self, name: str) -> Path:
        path = self.out / name
        if self.is_main:
            ckpt.save_checkpoint(self.unwrapped, self.tokenizer_dir, path, self.info(), self.state_dict())
            if name != ckpt.FINAL:
                ckpt.prune_checkpoints(self.out, self.cfg.keep_checkpoints)
            self.log({"event": "checkpoint", "step": self.step, "path": str(path)})
        self.accelerator.wait_for_everyone()
        return path

    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / LOG_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def _trim_log(self) -> None:
        """A resumed run drops log records past its checkpoint (they will be written again)."""
        file = self.out / LOG_FILE
        if not self.is_main or not file.exists():
            return
        keep = [line for line in file.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= self.step]
        atomic_write_text(file, "".join(line + "\n" for line in keep))

    # ---- one step -----------------------------------------------------------------------------
    def _next_batch(self) -> list[int]:
        """This process's share of the next global micro-batch (one batch per process)."""
        batches = [self.stream.next() for _ in range(self.accelerator.num_processes)]
        return batches[self.accelerator.process_index]

    def _micro_loss(self, batch, schedule) -> tuple[torch.Tensor, dict]:
        loss, logits = batch_loss(self.model, batch, schedule)
        parts = {"ce": float(loss.detach())}
        if self.teacher is not None:
            P = batch.prompt_len
            with torch.no_grad(), self.accelerator.autocast():
                t_logits, _ = self.teacher(batch.input_ids, batch.attention_mask, prompt_len=P, logits_start=P - 1)
            kl = distill_kl(logits, t_logits, batch.labels[:, P:])
            parts["kl"] = float(kl.detach())
            w = self.cfg.distill_weight
            loss = (1 - w) * loss + w * kl
        return loss, parts

    def train_step(self) -> dict:
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "tokens": 0, "lr": self.scheduler.get_last_lr()[0]}
        for micro in range(cfg.grad_accum):
            batch = collate([self.pairs[i] for i in self._next_batch()], self.tokenizer.pad_id)
            batch = batch.to(self.accelerator.device)
            schedule = self.sampler.sample(self.rng)
            sync = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(self.model):
                loss, parts = self._micro_loss(batch, schedule)
                self.accelerator.backward(loss / cfg.grad_accum)
            totals["loss"] += float(loss.detach()) / cfg.grad_accum
            totals["tokens"] += batch.num_tokens
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v / cfg.grad_accum
        if cfg.max_grad_norm > 0:
            totals["grad_norm"] = float(self.accelerator.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return totals

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict:
        record = {"event": "eval", "step": self.step}
        if self.is_main and (self.eval_pairs or self.sample_examples):
            model = self.unwrapped.eval()
            t0 = time.perf_counter()
            losses, samples = {}, {}
            for name, schedule in self.sampler.eval_schedules().items():
                if self.eval_pairs:
                    losses[name] = round(dev_loss(model, self.eval_pairs, schedule, self.cfg.batch_size,
                                                  self.tokenizer.pad_id, self.accelerator.device,
                                                  self.accelerator.autocast), 5)
                samples[name] = greedy_samples(model, self.tokenizer, self.sample_examples, schedule,
                                               self.cfg.max_new_tokens)
            model.train()
            names = list(losses)
            record.update({"dev_loss": losses[names[0]] if names else None, "dev_loss_by_schedule": losses,
                           "samples": samples, "eval_examples": len(self.eval_pairs),
                           "eval_s": round(time.perf_counter() - t0, 2)})
            self.log(record)
        self.accelerator.wait_for_everyone()
        return record

    def _mean_over_processes(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        t = torch.tensor([value], device=self.accelerator.device)
        return float(self.accelerator.reduce(t, reduction="mean"))

    def _warn_if_disk_is_short(self) -> None:
        """Checkpoints on disk at once: the kept ones, the one being written and the final one."""
        cfg = self.cfg
        saves = (self.total_steps - self.step) // cfg.save_every if cfg.save_every else 0
        at_once = (min(cfg.keep_checkpoints, saves) if cfg.keep_checkpoints else saves) + 2
        size = ckpt.checkpoint_bytes(self.unwrapped)
        free = ckpt.free_bytes(self.out)
        if free < at_once * size:
            print(f"skipdecode train: warning: {free / 1e9:.1f} GB free under {self.out}, and up to {at_once} "
                  f"checkpoints of ~{size / 1e9:.2f} GB may be on disk at once", file=sys.stderr)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, hooks: Sequence[Callable[["Trainer"], None]] = ()) -> TrainResult:
        """Train to the last step; ``hooks`` run after every step (tests use them)."""
        from tqdm import tqdm

        cfg = self.cfg
        if self.resume_state is not None:
            self._trim_log()
            self.log({"event": "resume", "step": self.step, "from": str(self.resume_path)})
        else:
            self.log({"event": "start", "step": 0, "total_steps": self.total_steps, "train_examples": len(self.pairs),
                      "config": cfg.to_dict(), **self.info(), "describe": self.sampler.saved().describe()})
            if cfg.eval_every:
                self.evaluate()
        if self.is_main:
            self._warn_if_disk_is_short()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", file=sys.stderr,
                   disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        window = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0}
        ema = None
        last_loss = None
        interrupted = False
        with graceful_interrupt() as flag:
            while self.step < self.total_steps and not flag["stop"]:
                t0 = time.perf_counter()
                stats = self.last_stats = self.train_step()
                dt = time.perf_counter() - t0
                ema = stats["loss"] if ema is None else 0.9 * ema + 0.1 * stats["loss"]
                for k, v in (("loss", stats["loss"]), ("n", 1), ("tokens", stats["tokens"]), ("time", dt)):
                    window[k] += v
                bar.set_postfix(loss=f"{ema:.3f}", tok_s=f"{stats['tokens'] * self.accelerator.num_processes / dt:.0f}",
                                lr=f"{stats['lr']:.2e}", refresh=False)
                bar.update(1)
                for hook in hooks:
                    hook(self)
                done = self.step >= self.total_steps
                if cfg.log_every and (self.step % cfg.log_every == 0 or done):
                    last_loss = self._mean_over_processes(window["loss"] / window["n"])
                    self.log({"event": "train", "step": self.step, "epoch": self.stream.epoch,
                              "loss": round(last_loss, 5), "lr": stats["lr"],
                              "grad_norm": round(stats.get("grad_norm", 0.0), 4),
                              "step_s": round(window["time"] / window["n"], 3),
                              "tokens_per_s": round(window["tokens"] * self.accelerator.num_processes / window["time"], 1),
                              **({k: round(stats[k], 5) for k in ("ce", "kl")} if "kl" in stats else {})})
                    window = {"loss": 0.0, "n": 0, "tokens": 0, "time": 0.0}
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or done):
                    self.evaluate()
                if flag["stop"] and not done:
                    interrupted = True
                    break
                if cfg.save_every and self.step % cfg.save_every == 0 and not done:
                    self.save(ckpt.checkpoint_name(self.step))
        bar.close()
        if window["n"]:
            last_loss = window["loss"] / window["n"]
        if interrupted:
            path = self.save(ckpt.checkpoint_name(self.step))
        else:
            path = self.save(ckpt.FINAL)
        return TrainResult(self.step, path, interrupted, last_loss)
