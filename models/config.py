"""Model configs: dataclasses read from (and written back to) transformers' config.json."""

from __future__ import annotations

from dataclasses import dataclass, field

from skipdecode.errors import SkipDecodeError

# architecture name in config.json -> family
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "OPTForCausalLM": "opt",
}
MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "opt": "opt"}


@dataclass(frozen=True)
class LlamaConfig:
    """Llama family: RMSNorm, RoPE, SwiGLU, GQA; optional q/k/v bias (Qwen2)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    """{'rope_type': 'linear'|'llama3', 'factor': ...} or None."""
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    hf: dict = field(default_factory=dict, compare=False, repr=False)
    """The original config.json, written back unchanged into checkpoints."""

    family = "llama"

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def num_kv_heads(self) -> int:
        return self.num_key_value_heads

    @classmethod
    def from_hf(cls, d: dict) -> "LlamaConfig":
        heads = d["num_attention_heads"]
        rope = dict(d.get("rope_parameters") or {})  # transformers >= 5
        theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        scaling = d.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling is not None:
            scaling = dict(scaling)
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind not in ("default", "linear", "llama3"):
                raise SkipDecodeError(f"unsupported rope scaling {kind!r} (supported: linear, llama3)")
            scaling = None if kind == "default" else {**scaling, "rope_type": kind}
        if d.get("sliding_window") and d.get("use_sliding_window", True) and d.get("model_type") == "mistral":
            raise SkipDecodeError("Mistral sliding-window attention is not supported")
        is_qwen2 = d.get("model_type") == "qwen2"
        bias = bool(d.get("attention_bias", False))
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=scaling,
            qkv_bias=True if is_qwen2 else bias,
            o_bias=False if is_qwen2 else bias,
            mlp_bias=bool(d.get("mlp_bias", False)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            hidden_act=d.get("hidden_act", "silu"),
            hf=d,
        )


@dataclass(frozen=True)
class OPTConfig:
    """OPT, the paper's family: learned positions (offset 2), pre/post LayerNorm, ReLU FFN."""

    vocab_size: int
    hidden_size: int
    ffn_dim: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int = 2048
    word_embed_proj_dim: int = 0
    do_layer_norm_before: bool = True
    remove_final_layer_norm: bool = False
    layer_norm_elementwise_affine: bool = True
    enable_bias: bool = True
    activation_function: str = "relu"
    tie_word_embeddings: bool = True
    hf: dict = field(default_factory=dict, compare=False, repr=False)

    family = "opt"
    position_offset = 2  # OPT's learned positions start at index 2

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def num_kv_heads(self) -> int:
        return self.num_attention_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, d: dict) -> "OPTConfig":
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            ffn_dim=d["ffn_dim"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            word_embed_proj_dim=d.get("word_embed_proj_dim") or d["hidden_size"],
            do_layer_norm_before=d.get("do_layer_norm_before", True),
            remove_final_layer_norm=d.get("_remove_final_layer_norm", False),
            layer_norm_elementwise_affine=d.get("layer_norm_elementwise_affine", True),
            enable_bias=d.get("enable_bias", True),
            activation_function=d.get("activation_function", "relu"),
            tie_word_embeddings=d.get("tie_word_embeddings", True),
            hf=d,
        )


ModelConfig = LlamaConfig | OPTConfig


def config_from_hf(d: dict, source: str = "config.json") -> ModelConfig:
    """Pick the family from ``architectures`` (or ``model_type``) and parse the config."""
    arch = (d.get("architectures") or [None])[0]
    family = ARCHITECTURES.get(arch) if arch else MODEL_TYPES.get(d.get("model_type", ""))
    if family is None:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise SkipDecodeError(
            f"{source}: unsupported architecture {arch or d.get('model_type')!r} (supported: {supported})"
        )
    try:
        return LlamaConfig.from_hf(d) if family == "llama" else OPTConfig.from_hf(d)
    except KeyError as e:
        raise SkipDecodeError(f"{source}: missing field {e.args[0]!r}") from None
