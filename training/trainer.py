"""Skip-aware fine-tuning: each batch runs the training forward under a SkipDecode schedule, so
the upper layers learn to continue from the lower layers' output of earlier positions.

The loop is written against ``accelerate.Accelerator`` (one process on a CPU; DDP and mixed
precision under ``accelerate launch``). Everything that decides the next step (weights,
optimizer, LR schedule, data position, RNG) is saved in checkpoints, so a resumed run takes the
same steps as an uninterrupted one.

Laid out as torchtune's recipes are: ``__init__`` reads the settings, :meth:`Trainer.setup`
builds the model, data and optimizer and loads the checkpoint to resume, :meth:`Trainer.run`
is the loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import torch

from skipdecode.errors import SkipDecodeError
from skipdecode.models.loading import copy_tokenizer
from skipdecode.io import atomic_write_text
from skipdecode.models import load_model
from skipdecode.models.adapters import ENTRY_ADAPTER
from skipdecode.training import checkpoint as ckpt
from skipdecode.training.config import TrainConfig
from skipdecode.data import Example
from skipdecode.schedule import read_trained_schedule
from skipdecode.training.batches import BatchStream, collate, tokenize
from skipdecode.training.evaluate import batch_loss, dev_loss, distill_kl, greedy_samples, spread
from skipdecode.training.loop import LossWindow, graceful_interrupt
from skipdecode.training.optim import make_optimizer
from skipdecode.training.precision import PrecisionChoice, resolve
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
    """Mean training loss over the last logging interval (over all processes)."""


def first_per_prompt(examples: Sequence[Example]) -> list[Example]:
    """The first example of each distinct prompt, in order (one greedy sample per prompt)."""
    seen, firsts = set(), []
    for e in examples:
        if e.prompt not in seen:
            seen.add(e.prompt)
            firsts.append(e)
    return firsts


class Trainer:
    def __init__(self, cfg: TrainConfig, model_spec: str, train_examples: Sequence[Example],
                 eval_examples: Sequence[Example], make_sampler: Callable[[int, object], ScheduleSampler],
                 distill_from: str | None = None, resume: bool = False, extra_info: dict | None = None):
        """Reads the settings only: nothing is loaded or written before :meth:`setup`.

        ``make_sampler(num_layers, trained_schedule)`` builds the schedule sampler once the
        model's depth is known; ``extra_info`` is recorded in each checkpoint's skipdecode.json."""
        from accelerate import PartialState

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.model_spec = model_spec
        self.train_examples, self.eval_examples = train_examples, eval_examples
        self.make_sampler = make_sampler
        self.distill_from = distill_from
        self.resume = resume
        self.extra_info = dict(extra_info or {})
        self.accelerator = None  # made in setup(), once the model's sizes choose the precision
        self.precision: PrecisionChoice | None = None
        self.is_main = PartialState(cpu=not torch.cuda.is_available()).is_main_process
        self.resume_path: Path | None = None
        self.teacher = None
        self.step = 0
        self.last_stats: dict = {}
        self.train_loss: float | None = None
        self.best: dict | None = None  # --keep-best: {"step", "dev_loss"} of best/
        self.fitted: dict | None = None  # --max-minutes: {"step", "pace_s", "total_steps"} once the run is fitted
        self._is_set_up = False

    # ---- setup --------------------------------------------------------------------------------
    def setup(self) -> "Trainer":
        """Model, data, optimizer, then the checkpoint to resume; returns ``self``. Refuses at once,
        before loading anything, an --out that already holds checkpoints (without ``resume``) or
        that holds none (with it)."""
        if self.distill_from and self.cfg.self_distill:
            raise SkipDecodeError("give --distill-from or --self-distill, not both")
        self.resume_path = self._checkpoint_to_resume()
        self._setup_model()
        self._setup_accelerator()
        self._setup_data()
        self.rng = random.Random(self.cfg.seed)  # the schedule draws; saved in checkpoints
        torch.manual_seed(self.cfg.seed)
        self._setup_optimizer()
        if self.resume_path is not None:
            self.load_checkpoint(self.resume_path)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self.distill_from:
            self._setup_teacher()
        self._is_set_up = True
        return self

    def _checkpoint_to_resume(self) -> Path | None:
        found = ckpt.list_checkpoints(self.out) if self.out.exists() else []
        if self.resume:
            if not found:
                raise SkipDecodeError(f"--resume: no checkpoint with {ckpt.TRAINER_STATE} in {self.out}")
            return found[-1][1]
        if found:
            raise SkipDecodeError(f"{self.out} already holds checkpoints: pass --resume to continue, "
                                  f"or choose another --out")
        return None

    def _setup_model(self) -> None:
        """The student (from the checkpoint when resuming), its tokenizer and the schedule sampler."""
        spec = str(self.resume_path) if self.resume_path is not None else self.model_spec
        loaded = load_model(spec)
        self.tokenizer = loaded.tokenizer
        self.tokenizer_dir = self._write_tokenizer(loaded.path)
        self.model = loaded.model.train()
        # what it was trained under, not a schedule `skipdecode tune` chose for it since (a resume must match)
        self.sampler = self.make_sampler(self.model.num_layers, read_trained_schedule(loaded.path))
        self.base_model = self.extra_info.get("base_model", spec)
        self._setup_adapters(spec)

    def _setup_adapters(self, spec: str) -> None:
        """Entry adapters (``--entry-adapter``) at the schedule family's entry layers, the identity
        at the start (a low-rank init drawn from the seed). A model that carries them already (the
        checkpoint resumed, or one fine-tuned further) keeps its own, which must be the ones asked for."""
        rank, have = self.cfg.entry_adapter_rank, self.model.entry_adapters
        layers = self.sampler.saved().entry_layers
        if have is None and rank is not None and self.resume_path is None:
            self.model.add_entry_adapters(rank, layers, seed=self.cfg.seed)
            return
        if (have.rank if have is not None else None) != rank:
            what = "no entry adapters" if have is None else f"entry adapters of rank {have.rank}"
            raise SkipDecodeError(f"--entry-adapter {self.cfg.entry_adapter}: {spec} has {what} "
                                  f"(give --entry-adapter {have.rank if have is not None else 0})")
        if have is not None and not set(layers) <= set(have.layers):
            raise SkipDecodeError(f"{spec}'s entry adapters cover layers {list(have.layers)}; this schedule "
                                  f"family enters layers {list(layers)}")

    def _setup_accelerator(self) -> None:
        """The precision (``--mixed-precision auto``: measured on this machine at the model's sizes,
        training/precision.py) and the accelerator that applies it."""
        from accelerate import Accelerator

        c = self.model.config
        ffn = c.ffn_dim if hasattr(c, "ffn_dim") else c.intermediate_size  # OPT's name, Llama's
        self.precision = resolve(self.cfg.mixed_precision, c.hidden_size, ffn)
        self.accelerator = Accelerator(mixed_precision=self.precision.setting, cpu=not torch.cuda.is_available())
        if self.is_main:
            print(f"skipdecode train: precision {self.precision.describe()}", file=sys.stderr)

    def _write_tokenizer(self, source: Path) -> Path:
        """One copy of the tokenizer in the run folder, which every checkpoint copies: the folder a
        run resumed from may be pruned."""
        folder = self.out / "tokenizer"
        if self.is_main and not (folder / "tokenizer.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            copy_tokenizer(source, folder)
        return folder

    def _setup_data(self) -> None:
        """Tokenized training pairs and their batch order, the dev-loss pairs and the prompts
        sampled at each evaluation; the run's length in optimizer steps."""
        cfg = self.cfg
        self.pairs, dropped = tokenize(self.train_examples, self.tokenizer, cfg.max_length)
        if not self.pairs:
            raise SkipDecodeError(f"no training example fits in --max-length {cfg.max_length} tokens")
        if dropped and self.is_main:
            print(f"skipdecode train: dropped {dropped} examples longer than {cfg.max_length} tokens", file=sys.stderr)
        self.eval_pairs, _ = tokenize(spread(list(self.eval_examples), cfg.eval_examples), self.tokenizer,
                                      cfg.max_length)
        self.sample_examples = spread(first_per_prompt(self.eval_examples), cfg.eval_samples)
        if cfg.keep_best and not self.eval_pairs:
            raise SkipDecodeError("--keep-best: no held-out example to take the dev loss on (give --eval-data or --holdout)")
        self.stream = BatchStream([len(p) + len(t) for p, t in self.pairs], cfg.batch_size, cfg.seed)
        self.total_steps = cfg.total_steps(math.ceil(len(self.stream) / self.accelerator.num_processes))

    def _setup_optimizer(self) -> None:
        self.model.to(self.accelerator.device)
        self.optimizer, self.scheduler = make_optimizer(self.model, self.cfg, lambda: self.total_steps)

    def _setup_teacher(self) -> None:
        teacher = load_model(self.distill_from, device=str(self.accelerator.device))
        if teacher.model.config.vocab_size != self.model_config.vocab_size:
            raise SkipDecodeError(f"--distill-from {self.distill_from}: vocabulary {teacher.model.config.vocab_size} "
                                  f"differs from the student's {self.model_config.vocab_size}")
        self.teacher = teacher.model.eval().requires_grad_(False)

    def load_checkpoint(self, path: Path) -> None:
        """Continue from ``path``'s trainer state: step, data position, optimizer, LR schedule and
        RNGs. Refuses a run whose data order, data or schedule flags differ from the checkpoint's."""
        state = ckpt.load_trainer_state(path)
        saved = state["config"]
        changed = [k for k in RESUME_FIXED if saved.get(k) != getattr(self.cfg, k)]
        if changed:
            raise SkipDecodeError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in changed)} differ from "
                                  f"the checkpoint's ({', '.join(f'{k}={saved.get(k)}' for k in changed)})")
        if state["num_train"] != len(self.pairs):
            raise SkipDecodeError(f"--resume: {len(self.pairs)} training examples, the checkpoint was trained on "
                                  f"{state['num_train']} (give the same --data)")
        if state.get("data_digest", self.data_digest) != self.data_digest:  # checkpoints before it lack one
            raise SkipDecodeError("--resume: the training pairs differ from the checkpoint's (give the same --data, "
                                  "--holdout, --seed, --augment-names and --augment-values)")
        theirs, mine = state["sampler"], self.sampler.to_dict()
        keys = set(theirs) | (set(mine) - {"window", "decay"})  # range checkpoints before them lack window, decay
        differ = sorted(k for k in keys if theirs.get(k) != mine.get(k))
        if differ:
            got = ", ".join(f"{k}={theirs.get(k)!r}" for k in differ if k != "schedule")
            raise SkipDecodeError("--resume: the schedule flags differ from the checkpoint's (skipdecode.json"
                                  + (f": {got}" if got else "") + ")")
        self.step = int(state["step"])
        self.stream.load_state_dict(state["stream"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["lr_scheduler"])
        self.rng.setstate(state["rng"])
        self.best = state.get("best")  # a checkpoint from before --keep-best has none: the next evaluation writes best/
        self.fitted = state.get("fitted")  # --max-minutes: the count chosen stays
        if self.fitted:
            self.total_steps = int(self.fitted["total_steps"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    # ---- state --------------------------------------------------------------------------------
    @cached_property
    def data_digest(self) -> str:
        """A hash of the training pairs' text, in order: a resume must train on the same pairs."""
        h = hashlib.sha256()
        for e in self.train_examples:
            h.update(f"{e.prompt}\0{e.target}\0".encode())
        return h.hexdigest()[:16]

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
            "data_digest": self.data_digest,
            "total_steps": self.total_steps,
            "best": self.best,
            "fitted": self.fitted,
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def info(self) -> dict:
        adapters = self.unwrapped.entry_adapters
        return {**self.sampler.to_dict(), "base_model": self.base_model, "step": self.step,
                **({ENTRY_ADAPTER: adapters.spec()} if adapters is not None else {}),
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
        if self.teacher is not None:  # --distill-from: a frozen full-depth model
            teacher, w = self.teacher, self.cfg.distill_weight
        elif self.cfg.self_distill and not schedule.is_full:  # --self-distill: this model at full depth
            teacher, w = self.model, self.cfg.self_distill
        else:
            return loss, parts
        P = batch.prompt_len
        with torch.no_grad(), self.accelerator.autocast():  # no schedule: full depth
            t_logits, _ = teacher(batch.input_ids, batch.attention_mask, prompt_len=P, logits_start=P - 1)
        kl = distill_kl(logits, t_logits, batch.labels[:, P:])
        parts["kl"] = float(kl.detach())
        return (1 - w) * loss + w * kl, parts

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
            self._keep_if_best(record["dev_loss"])
        self.accelerator.wait_for_everyone()
        return record

    def _keep_if_best(self, loss: float | None) -> None:
        """--keep-best: write best/ when ``loss`` (this step's dev loss) is the lowest so far."""
        if not self.cfg.keep_best or loss is None or (self.best is not None and loss >= self.best["dev_loss"]):
            return
        self.best = {"step": self.step, "dev_loss": loss}
        path = ckpt.save_checkpoint(self.unwrapped, self.tokenizer_dir, self.out / ckpt.BEST,
                                    {**self.info(), "dev_loss": loss})
        self.log({"event": "best", "step": self.step, "dev_loss": loss, "path": str(path)})

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, hooks: Sequence[Callable[["Trainer"], None]] = ()) -> TrainResult:
        """Train to the last step (setting up first if :meth:`setup` was not called); ``hooks``
        run after every step (tests use them)."""
        from tqdm import tqdm

        if not self._is_set_up:
            self.setup()
        cfg = self.cfg
        self._begin()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", file=sys.stderr,
                   disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        window = LossWindow()
        interrupted = False
        t_start, step_start, t_first = time.perf_counter(), self.step, None  # t_first: the end of this process's first step
        with graceful_interrupt() as flag:
            while self.step < self.total_steps and not flag["stop"]:
                t0 = time.perf_counter()
                stats = self.last_stats = self.train_step()
                seconds = time.perf_counter() - t0
                window.add(stats["loss"], stats["tokens"], seconds)
                bar.set_postfix(loss=f"{window.ema:.3f}",
                                tok_s=f"{stats['tokens'] * self.accelerator.num_processes / seconds:.0f}",
                                lr=f"{stats['lr']:.2e}", refresh=False)
                bar.update(1)
                if t_first is None:
                    t_first = time.perf_counter()
                if cfg.max_minutes and self.fitted is None and self.step >= max(1, cfg.warmup_steps):
                    self._fit_to_budget(t_start, t_first, self.step - step_start)
                    bar.total = self.total_steps
                    bar.refresh()
                for hook in hooks:
                    hook(self)
                done = self.step >= self.total_steps
                if self._due(cfg.log_every, done):
                    self._log_train(window, stats)
                if self._due(cfg.eval_every, done):
                    self.evaluate()
                if flag["stop"] and not done:
                    interrupted = True
                    break
                if cfg.save_every and self.step % cfg.save_every == 0 and not done:
                    self.save(ckpt.checkpoint_name(self.step))
        bar.close()
        if window.steps:  # steps past the last train record (log_every 0, or Ctrl-C between records)
            self.train_loss = self._window_loss(window)
        path = self.save(ckpt.checkpoint_name(self.step) if interrupted else ckpt.FINAL)
        return TrainResult(self.step, path, interrupted, self.train_loss)

    def _fit_to_budget(self, t_start: float, t_first: float, steps: int) -> None:
        """--max-minutes: cut the run to the steps that fit in what is left of the budget, which
        began at ``t_start``, at the pace of the ``steps`` taken since; the first of them, which ended
        at ``t_first``, sets the pace only when it is the only one (it also pays one-time costs). The
        same count on every process."""
        now = time.perf_counter()
        pace = self._mean_over_processes((now - t_first) / (steps - 1) if steps > 1 else now - t_start)
        left = self.cfg.max_minutes * 60 - self._mean_over_processes(now - t_start)
        planned = self.total_steps
        self.total_steps = min(planned, self.step + max(0, int(left // pace)))
        self.fitted = {"step": self.step, "pace_s": round(pace, 3), "total_steps": self.total_steps}
        self.log({"event": "fit", **self.fitted, "planned_steps": planned, "max_minutes": self.cfg.max_minutes})
        if self.is_main:
            print(f"\nskipdecode train: --max-minutes {self.cfg.max_minutes:g}: {self.total_steps} of {planned} "
                  f"steps fit, at {pace:.2f} s a step so far", file=sys.stderr)

    def _begin(self) -> None:
        """The log's first record (start, or resume after trimming what the checkpoint has not
        seen), the step-0 evaluation of a fresh run, and the disk-space warning."""
        if self.resume_path is not None:
            self._trim_log()
            self.log({"event": "resume", "step": self.step, "from": str(self.resume_path)})
        else:
            self.log({"event": "start", "step": 0, "total_steps": self.total_steps, "train_examples": len(self.pairs),
                      "config": self.cfg.to_dict(), **self.info(), "describe": self.sampler.saved().describe(),
                      "precision": asdict(self.precision)})
            if self.cfg.eval_every:
                self.evaluate()
        if self.is_main:
            saves = (self.total_steps - self.step) // self.cfg.save_every if self.cfg.save_every else 0
            warning = ckpt.disk_warning(self.out, self.unwrapped, saves, self.cfg.keep_checkpoints)
            if warning:
                print(f"skipdecode train: warning: {warning}", file=sys.stderr)

    def _due(self, every: int, done: bool) -> bool:
        """Every ``every`` steps and at the last one; never when ``every`` is 0."""
        return bool(every) and (self.step % every == 0 or done)

    def _window_loss(self, window: LossWindow) -> float:
        """The window's mean loss over every process's batches: what the log and the result report."""
        return self._mean_over_processes(window.mean_loss())

    def _log_train(self, window: LossWindow, stats: dict) -> None:
        self.train_loss = self._window_loss(window)
        self.log({"event": "train", "step": self.step, "epoch": self.stream.epoch,
                  "loss": round(self.train_loss, 5), "lr": stats["lr"],
                  "grad_norm": round(stats.get("grad_norm", 0.0), 4),
                  "step_s": round(window.step_seconds(), 3),
                  "tokens_per_s": round(window.tokens * self.accelerator.num_processes / window.seconds, 1),
                  **({k: round(stats[k], 5) for k in ("ce", "kl")} if "kl" in stats else {})})
        window.reset()

    def _mean_over_processes(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        t = torch.tensor([value], device=self.accelerator.device)
        return float(self.accelerator.reduce(t, reduction="mean"))
