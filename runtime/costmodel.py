"""What a decode step must cost, from the bytes it reads and the FLOPs it does (no torch).

A step is a chain of graphs: embed, the n_t layers of the schedule, the LM head. Each graph
costs ``max(bytes / bandwidth, flops / peak)``: weight bytes dominate at batch 1 (memory bound),
FLOPs at large batches. The LM head is a fixed cost of every step (for SmolLM2 its 28M-parameter
projection weighs as much as 8 layers), so running a third of the layers is not a 3x step.
The ideal speedup of a schedule is the full-depth decode time over its decode time.

>>> shape = ModelShape.from_hf_config(SMOLLM2_135M)
>>> round(shape.layer_params / 1e6, 2), round(shape.head_params / 1e6, 2)
(3.54, 28.31)
>>> from skipdecode.schedule import Schedule
>>> full, skip = Schedule.full(30), Schedule.for_speedup(30, 3, window=32)
>>> round(ideal_speedup(shape, full, batch_size=1, prompt_len=32, new_tokens=32), 2)
1.0
>>> round(ideal_speedup(shape, skip, batch_size=1, prompt_len=32, new_tokens=32), 2)
2.09
>>> round(ideal_speedup(shape, skip, batch_size=32, prompt_len=32, new_tokens=32), 2)
2.1
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.manifest import MANIFEST, load_manifest
from skipdecode.schedule import Schedule

# config.json of the embedded SmolLM2 (only the fields the cost model reads), for doctests
SMOLLM2_135M = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152, hidden_size=576,
    intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    head_dim=64, tie_word_embeddings=True,
)


@dataclass(frozen=True)
class Machine:
    """Roofline of the machine; the defaults were measured on the 2-core CPU of this project."""

    mem_bw_gbs: float = 44.0
    """Bytes the cores can stream from memory, GB/s."""
    gflops: float = 195.0
    """fp32 GEMM throughput, GFLOP/s."""

    def __post_init__(self):
        if not (self.mem_bw_gbs > 0 and self.gflops > 0):
            raise ValueError(f"bandwidth and FLOP/s must be > 0, got {self.mem_bw_gbs}, {self.gflops}")

    def seconds(self, nbytes: float, flops: float) -> float:
        return max(nbytes / (self.mem_bw_gbs * 1e9), flops / (self.gflops * 1e9))


@dataclass(frozen=True)
class ModelShape:
    """The sizes a decode step depends on, read from an HF config.json (Llama family or OPT)."""

    family: str
    vocab_size: int
    hidden_size: int
    ffn_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layer_params: int
    """Parameters of one decoder layer (matrices, biases, norms)."""
    head_params: int
    """Final norm, OPT's project_out and the LM head."""
    embed_step_params: int = 0
    """Parameters read per step by the embedding besides the gathered rows (OPT's project_in)."""
    bytes_per_param: int = 4

    @classmethod
    def from_hf_config(cls, d: dict, bytes_per_param: int = 4) -> "ModelShape":
        arch = (d.get("architectures") or [""])[0]
        is_opt = d.get("model_type") == "opt" or arch.startswith("OPT")
        h, L, H = d["hidden_size"], d["num_hidden_layers"], d["num_attention_heads"]
        V = d["vocab_size"]
        if is_opt:
            ffn, e = d["ffn_dim"], d.get("word_embed_proj_dim") or h
            bias = d.get("enable_bias", True)
            norm = 2 * h if d.get("layer_norm_elementwise_affine", True) else 0
            layer = 4 * h * h + 2 * h * ffn + (4 * h + ffn + h) * bias + 2 * norm
            final = norm if d.get("do_layer_norm_before", True) and not d.get("_remove_final_layer_norm") else 0
            project = h * e if e != h else 0
            return cls("opt", V, h, ffn, L, H, H, h // H, layer, final + project + e * V, project, bytes_per_param)
        ffn, Hkv = d["intermediate_size"], d.get("num_key_value_heads") or H
        D = d.get("head_dim") or h // H
        qkv_bias = d.get("model_type") == "qwen2" or d.get("attention_bias", False)
        o_bias = d.get("model_type") != "qwen2" and d.get("attention_bias", False)
        attn = h * H * D + 2 * h * Hkv * D + H * D * h + (H * D + 2 * Hkv * D) * qkv_bias + h * o_bias
        mlp = 3 * h * ffn + (2 * ffn + h) * d.get("mlp_bias", False)
        return cls("llama", V, h, ffn, L, H, Hkv, D, attn + mlp + 2 * h, h + h * V, 0, bytes_per_param)

    @classmethod
    def from_dir(cls, path: str | Path) -> "ModelShape":
        """From ``config.json`` of a checkpoint, or the ``config`` of an export's manifest.json."""
        path = Path(path)
        f = path / "config.json" if (path / "config.json").is_file() else path / MANIFEST
        if not f.is_file():
            raise SkipDecodeError(f"{path}: neither config.json nor {MANIFEST} (the cost model needs the sizes)")
        try:
            if f.name == MANIFEST:
                m = load_manifest(path, verify=False)
                return cls.from_hf_config(m.config, {"float32": 4, "float16": 2, "bfloat16": 2}.get(m.dtype, 4))
            return cls.from_hf_config(json.loads(f.read_text()))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise SkipDecodeError(f"{f}: cannot read the model sizes ({e!r})") from None

    # ---- one graph each: (bytes, flops) ------------------------------------------------------
    def embed_cost(self, batch: int, tokens: int = 1) -> tuple[float, float]:
        rows = batch * tokens
        p = self.bytes_per_param
        return rows * self.hidden_size * p + self.embed_step_params * p, 2.0 * rows * self.embed_step_params

    def layer_cost(self, batch: int, context: int, tokens: int = 1) -> tuple[float, float]:
        """One decoder layer for ``tokens`` new tokens per row attending over ``context`` keys."""
        rows = batch * tokens
        kv = self.num_kv_heads * self.head_dim
        nbytes = (self.layer_params + 2 * batch * context * kv) * self.bytes_per_param  # weights + KV read
        flops = 2.0 * rows * self.layer_params + 4.0 * rows * context * self.num_heads * self.head_dim
        return nbytes, flops

    def head_cost(self, batch: int) -> tuple[float, float]:
        """Final norm + LM head of the last column only (logits written back)."""
        nbytes = (self.head_params + batch * self.vocab_size) * self.bytes_per_param
        return nbytes, 2.0 * batch * self.head_params


def step_seconds(shape: ModelShape, batch: int, layers: int, context: int, machine: Machine = Machine()) -> float:
    """Ideal time of one decode step running ``layers`` layers over ``context`` keys."""
    return (machine.seconds(*shape.embed_cost(batch))
            + layers * machine.seconds(*shape.layer_cost(batch, context))
            + machine.seconds(*shape.head_cost(batch)))


def decode_layers(schedule: Schedule, new_tokens: int) -> list[int]:
    """n_t of every decode forward: generated token t is fed back (running n_t layers) for
    t < new_tokens - 1; token 0 comes from the prefill and the last one is never fed back."""
    return [schedule.layers_at(t) for t in range(new_tokens - 1)]


def decode_seconds(shape: ModelShape, schedule: Schedule, batch_size: int, prompt_len: int,
                   new_tokens: int, machine: Machine = Machine()) -> float:
    """Ideal time of the decode phase (every step after the first token)."""
    return sum(step_seconds(shape, batch_size, n, prompt_len + t + 1, machine)
               for t, n in enumerate(decode_layers(schedule, new_tokens)))


def ideal_speedup(shape: ModelShape, schedule: Schedule, batch_size: int, prompt_len: int,
                  new_tokens: int, machine: Machine = Machine()) -> float:
    """Full-depth decode time over this schedule's decode time, LM head and embed included."""
    full = Schedule.full(schedule.num_layers)
    return (decode_seconds(shape, full, batch_size, prompt_len, new_tokens, machine)
            / decode_seconds(shape, schedule, batch_size, prompt_len, new_tokens, machine))
