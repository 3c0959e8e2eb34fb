"""Calibration data: the inputs each graph of an export really sees under a skip schedule.

A token that skips the lower layers enters a high layer with a hidden state the full model never
produces there, so activation ranges taken from full-depth runs are wrong for skipped steps. We
run the fp32 export through the ONNX Runtime backend and the shared generation loop (the
deployment path itself) on task prompts, and record the arrays bound to every graph call through
the backend's ``capture`` hook: prefill and every skip decode step.

One shard (``shard_NNN.npz``) per generation batch. Per graph, the prefill call's inputs and the
decode calls' inputs stacked on a leading axis::

    layer_003/prefill/hidden (B, P, hidden)   layer_003/decode/hidden (n, B, 1, hidden)
    layer_003/decode/seqlens_k (n, B)         layer_003/decode/total_sequence_length (n,)
    layer_003/past_key, past_value (B, H_kv, T_used, D): the buffers after the batch
    embed/..., lm_head/...                    (their inputs, same layout)

KV is stored once per batch, not per call: buffers are append-only (a skipped layer never runs
again, nothing is recomputed), so a call's past is the final buffer cut to each row's length at
that call, ``seqlens_k + 1 - S`` (GroupQueryAttention layers) or ``write_index`` (standard layers).
``ShardSet.feeds`` rebuilds each call's inputs from that, with zeros past the valid keys where the
live buffer may hold stale rows of an earlier batch (neither layer kind reads them). For
calibration it also drops what carries no real token: the prefill's padding columns (one feed per
row instead) and rows that already ended but are still fed padding.
``index.json`` records samples, seed, schedule, data file, the export's manifest hash, and per
shard the prefill's and the steps' layer sets, prompt lengths and each row's real decode calls. A
layer outside the schedule's prompt layer set (a prompt depth below L) runs no call at all.
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from skipdecode.errors import SkipDecodeError
from skipdecode.export.contract import layer_index
from skipdecode.io import atomic_dir
from skipdecode.runtime.manifest import MANIFEST, sha256_file
from skipdecode.schedule import Schedule

INDEX = "index.json"
FORMAT_VERSION = 2
KV_INPUTS = ("past_key", "past_value")


def export_hash(export_dir: str | Path) -> str:
    """SHA-256 of the export's manifest.json (which holds every graph's SHA-256)."""
    return sha256_file(Path(export_dir) / MANIFEST)


# ---- prompts ----------------------------------------------------------------------------------
def calibration_prompts(path: str | Path, samples: int, seed: int = 0, fmt: str | None = None) -> list[str]:
    """``samples`` distinct task prompts of a training file (E2E CSV or JSONL), seeded shuffle.

    Test files are refused: calibrating on them would tune the quantized model to the data that
    later scores it.
    """
    from skipdecode.data import load_examples

    path = Path(path)
    if samples < 1:
        raise SkipDecodeError(f"--samples must be >= 1, got {samples}")
    if re.search(r"(^|[^a-z])test", path.name.lower()):
        raise SkipDecodeError(f"{path}: looks like a test set; calibrate on training prompts (never the test set)")
    prompts = list(dict.fromkeys(e.prompt for e in load_examples([path], fmt)))
    random.Random(seed).shuffle(prompts)
    return prompts[:samples]


# ---- recording --------------------------------------------------------------------------------
class Recorder:
    """A Backend wrapper over an ``OnnxRuntimeBackend`` that writes one shard per batch.

    It sets the backend's ``capture`` hook and learns the phase from prefill/decode; the engine
    drives it like any backend, under the static policy (fixed rows per batch, so each graph's
    decode calls stack into one array per shard).
    """

    def __init__(self, backend, folder: Path):
        self.inner = backend
        self.name, self.num_layers, self.max_positions = backend.name, backend.num_layers, backend.max_positions
        self.calls, self.capture = backend.calls, None
        self.folder = folder
        self.kind = backend.kind
        self.shards: list[dict] = []
        self._calls: dict[str, dict] | None = None
        backend.capture = self._on_call

    def allocate(self, rows: int, max_len: int) -> None:
        self.flush()  # before the backend may reuse (and overwrite) the buffers
        self.inner.allocate(rows, max_len)
        self._calls = None

    def prefill(self, start, ids, lengths, layers):
        self.flush()  # a new static batch reuses the rows: keep the last one's KV first
        self._calls, self._kv, self._steps = {}, {}, []
        self._phase = "prefill"
        self._prefill_layers = sorted(layers)
        self._lengths = [int(n) for n in lengths]
        return self.inner.prefill(start, ids, lengths, layers)

    def decode(self, ids, positions, ranges):
        self._phase = "decode"
        self._steps.append(tuple(l for l, (a, b) in enumerate(ranges) if a < b))
        return self.inner.decode(ids, positions, ranges)

    def move(self, src, dst, length, layers):
        raise RuntimeError("calibration records static batches, whose rows never move")

    def _on_call(self, key: str, feeds: dict[str, np.ndarray]) -> None:
        rec = self._calls.setdefault(key, {"prefill": {}, "decode": {}})
        for name, a in feeds.items():
            if name in KV_INPUTS:
                self._kv[(key, name)] = a  # the live buffer: read once the batch is done
            elif self._phase == "prefill":
                rec["prefill"][name] = np.array(a)
            else:
                rec["decode"].setdefault(name, []).append(np.array(a))

    def _used(self, key: str, rec: dict) -> int:
        """Buffer columns holding keys after the batch (the longest row's length)."""
        if self.kind == "gqa":
            last = rec["decode"]["seqlens_k"][-1] if rec["decode"] else rec["prefill"]["seqlens_k"]
            return int(last.max()) + 1
        S = rec["prefill"]["hidden"].shape[1]
        last = rec["decode"]["write_index"][-1] + 1 if rec["decode"] else np.full(1, S)
        return int(last.max())

    def flush(self) -> None:
        if not self._calls:
            return
        arrays: dict[str, np.ndarray] = {}
        for key, rec in self._calls.items():
            for name, a in rec["prefill"].items():
                arrays[f"{key}/prefill/{name}"] = a
            for name, parts in rec["decode"].items():
                arrays[f"{key}/decode/{name}"] = np.stack(parts)
            if layer_index(key) is not None:
                used = self._used(key, rec)
                for name in KV_INPUTS:
                    arrays[f"{key}/{name}"] = np.array(self._kv[(key, name)][:, :, :used])  # (B, H_kv, T_used, D)
        file = f"shard_{len(self.shards):03d}.npz"
        np.savez(self.folder / file, **arrays)
        calls = {k: len(r["decode"].get("hidden", [])) for k, r in self._calls.items() if layer_index(k) is not None}
        B, P = self._calls["embed"]["prefill"]["input_ids"].shape
        self.shards.append({"file": file, "rows": B, "prompt_len": P, "prompt_lengths": self._lengths,
                            "decode_steps": len(self._steps), "prefill_layers": self._prefill_layers,
                            "steps": [list(s) for s in self._steps], "decode_calls": calls,
                            "bytes": (self.folder / file).stat().st_size})
        self._calls = None


@dataclass(frozen=True)
class CaptureConfig:
    samples: int = 32
    """Distinct prompts; each runs its prefill and up to ``max_new_tokens`` decode steps."""
    seed: int = 0
    """Seed of the prompt draw."""
    batch_size: int = 8
    """Prompts generated together while capturing."""
    max_new_tokens: int = 48
    """Decode steps per prompt at most: greedy, stopping at EOS like deployment (the decode steps
    seen are the real ones)."""

    def __post_init__(self):
        for name in ("samples", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise SkipDecodeError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def capture(export_dir: str | Path, prompts: Sequence[str], schedule: Schedule, out: str | Path,
            config: CaptureConfig = CaptureConfig(), mode: str = "deployment", data: str | None = None,
            threads: int | None = None, show_progress: bool = True) -> dict:
    """Generate for ``prompts`` through the export under ``schedule``, write shards and index.json
    into ``out`` (replaced atomically); returns the index."""
    from tqdm import tqdm

    from skipdecode.runtime.generate import GenerationConfig, generate_ids
    from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from skipdecode.tokenizer import Tokenizer

    backend = OnnxRuntimeBackend(export_dir, threads=threads)
    if schedule.num_layers != backend.num_layers:
        raise SkipDecodeError(f"schedule is for {schedule.num_layers} layers, the export has {backend.num_layers}")
    tok = Tokenizer.from_dir(export_dir)
    ids = [tok.encode(p) for p in prompts]
    if not ids or any(len(i) == 0 for i in ids):
        raise SkipDecodeError("calibration needs at least one prompt, and every prompt must encode to tokens")
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        rec = Recorder(backend, tmp)
        with tqdm(total=len(ids), desc="calibration data", unit="prompt", file=sys.stderr,
                  disable=not show_progress) as bar:
            rows = generate_ids(rec, ids, schedule, GenerationConfig(config.max_new_tokens), tok.eos_ids,
                                tok.pad_id, config.batch_size, progress=bar.update, policy="static")
        rec.flush()
        _mark_live_rows(rec.shards, ids, rows, config.batch_size)
        m = backend.manifest
        index = {
            "format_version": FORMAT_VERSION,
            "export": {"path": str(Path(export_dir).resolve()), "manifest_sha256": export_hash(export_dir),
                       "target": m.target, "layer_kind": m.layer_kind, "num_layers": m.num_layers,
                       "max_seq": m.max_seq, "dtype": m.dtype},
            "schedule": schedule.to_dict(),
            "schedule_mode": mode,
            "schedule_text": schedule.describe(),
            "data": data,
            **asdict(config),
            "requested_samples": config.samples,
            "samples": len(ids),
            "prompt_tokens": sum(map(len, ids)),
            "generated_tokens": sum(r.tokens for r in rows),
            "seconds": round(time.perf_counter() - t0, 2),
            "shards": rec.shards,
        }
        (tmp / INDEX).write_text(json.dumps(index, indent=1))
    return index


def _mark_live_rows(shards: list[dict], ids, rows, batch_size: int) -> None:
    """Per shard row: how many decode calls fed it a real token. A row that ended (EOS, stop) is
    fed padding until the batch ends; row b's call t is real iff t < tokens_b - 1 (the last
    generated token is never fed back). The batches are generate_ids' own (length_batches)."""
    from skipdecode.runtime.generate import length_batches

    for shard, batch in zip(shards, length_batches(ids, batch_size), strict=True):
        if [len(ids[i]) for i in batch] != shard["prompt_lengths"]:
            raise RuntimeError("calibration shards and generation batches disagree on the rows")
        shard["live_decode_calls"] = [rows[i].tokens - 1 for i in batch]


# ---- reading ----------------------------------------------------------------------------------
class ShardSet:
    """A calibration folder: its index, and each graph call's inputs rebuilt as feed dicts."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        file = self.folder / INDEX
        if not file.is_file():
            raise SkipDecodeError(f"{self.folder}: not a calibration folder (no {INDEX})")
        try:
            self.index = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise SkipDecodeError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None
        if self.index.get("format_version") != FORMAT_VERSION:
            raise SkipDecodeError(f"{file}: format_version {self.index.get('format_version')!r}, "
                                  f"this version reads {FORMAT_VERSION}")
        for s in self.index["shards"]:
            if not (self.folder / s["file"]).is_file():
                raise SkipDecodeError(f"{self.folder / s['file']}: shard listed in {INDEX} is missing")
        self.schedule = Schedule.from_dict(self.index["schedule"])
        self.kind = self.index["export"]["layer_kind"]
        self.max_seq = self.index["export"]["max_seq"]

    @property
    def samples(self) -> int:
        return self.index["samples"]

    def calls(self, graph: str, phase: str | None = None) -> int:
        """How many calls of ``graph`` (a graph name) the shards hold: prefills and decode steps,
        or one ``phase``'s."""
        shards = self.index["shards"]
        l = layer_index(graph)
        decode = sum(s["decode_calls"].get(graph, 0) if l is not None else s["decode_steps"] for s in shards)
        prefill = sum(l is None or l in s.get("prefill_layers", range(l + 1)) for s in shards)
        return {None: prefill + decode, "prefill": prefill, "decode": decode}[phase]

    def feeds(self, graph: str, valid_only: bool = True, phase: str | None = None
              ) -> Iterator[dict[str, np.ndarray]]:
        """Every recorded call's inputs of ``graph`` (a graph name), prefill first, in the order they ran.

        ``valid_only`` (what calibration wants): only what carries a real token. The prefill is
        split into one feed per row without its padding columns, and decode calls keep only the
        rows still generating (an ended row is fed padding). Those are the same computations
        for the real tokens (a row attends only to its own keys). ``valid_only=False``: the
        calls exactly as they ran, padding and ended rows included. ``phase`` "prefill" or
        "decode": only that phase's calls.
        """
        if phase not in (None, "prefill", "decode"):
            raise ValueError(f"phase must be prefill, decode or None, got {phase!r}")
        key = graph
        layer = layer_index(key) is not None
        for s in self.index["shards"]:
            with np.load(self.folder / s["file"]) as z:
                pre = {n.split("/")[-1]: z[n] for n in z.files if n.startswith(f"{key}/prefill/")}
                dec = {n.split("/")[-1]: z[n] for n in z.files if n.startswith(f"{key}/decode/")}
                kv = {n: z[f"{key}/{n}"] for n in KV_INPUTS} if f"{key}/past_key" in z.files else None
            if not pre:
                continue
            if phase != "decode" and not valid_only:
                yield self._with_past(pre, kv)
            elif phase != "decode":
                for b, n in enumerate(s["prompt_lengths"]):
                    yield self._with_past(_prefill_row(pre, b, n, layer, self.kind), _rows(kv, [b]))
            if phase == "prefill":
                continue
            live = np.array(s["live_decode_calls"])
            calls = [t for t, run in enumerate(s["steps"]) if not layer or layer_index(key) in run]
            for i in range(len(dec.get("hidden", ()))):
                feed = {n: a[i, ...] for n, a in dec.items()}  # a[i, ...] keeps 0-d arrays arrays
                if valid_only:
                    keep = np.flatnonzero(live > calls[i])
                    if len(keep) == 0:
                        continue
                    feed = _select(feed, keep, self.kind)
                    yield self._with_past(feed, _rows(kv, keep))
                else:
                    yield self._with_past(feed, kv)

    def _with_past(self, feed: dict, kv: dict | None) -> dict:
        if kv is None:
            return feed
        B, S = feed["hidden"].shape[:2]
        if self.kind == "gqa":  # buffer length total_sequence_length; the op writes the S new keys
            valid = feed["seqlens_k"].astype(np.int64) + 1 - S
            length = int(feed["total_sequence_length"])
            if length == S:  # the prefill ("first prompt"): no past
                valid = np.zeros(B, np.int64)
        else:  # standard layers attend over the whole static buffer, masked at write_index
            valid, length = feed["write_index"].astype(np.int64), self.max_seq
        for name in KV_INPUTS:
            final = kv[name]  # (B, H_kv, T_used, D)
            past = np.zeros((B, final.shape[1], length, final.shape[3]), final.dtype)
            for b in range(B):
                past[b, :, :valid[b]] = final[b, :, :valid[b]]
            feed[name] = past
        return feed


def _rows(kv: dict | None, rows) -> dict | None:
    return None if kv is None else {n: a[rows] for n, a in kv.items()}


def _select(feed: dict, rows, kind: str) -> dict:
    """A decode call's inputs for a subset of its rows."""
    out = {n: (a[rows] if a.ndim else a) for n, a in feed.items()}
    if "seqlens_k" in out and kind == "gqa":
        out["total_sequence_length"] = np.array(out["seqlens_k"].max() + 1, np.int32)
    return out


def _prefill_row(pre: dict, b: int, n: int, layer: bool, kind: str) -> dict:
    """Row b's prefill without padding: (1, n, ...) as if it had been alone in its batch."""
    out = {}
    for name, a in pre.items():
        if name in ("hidden", "input_ids", "positions"):
            out[name] = a[b:b + 1, :n]
        elif name == "seqlens_k":
            out[name] = np.array([n - 1], a.dtype)
        elif name == "total_sequence_length":
            out[name] = np.array(n, a.dtype)
        elif name == "write_index":
            out[name] = np.zeros(1, a.dtype)
        elif name == "last_index":
            out[name] = np.array([n - 1], a.dtype)
        else:
            out[name] = a[b:b + 1]
    return out


def reusable(folder: str | Path, export_dir: str | Path, schedule: Schedule, config: CaptureConfig,
             data: str | None) -> ShardSet | None:
    """The calibration folder if it already holds this capture (same export, schedule, prompts)."""
    try:
        shards = ShardSet(folder)
    except SkipDecodeError:
        return None
    i = shards.index
    same = (i["export"]["manifest_sha256"] == export_hash(export_dir) and shards.schedule == schedule
            and i.get("data") == data and all(i.get(k) == v for k, v in asdict(config).items() if k != "samples")
            and i.get("requested_samples") == config.samples)
    return shards if same else None
