"""Tiny random models shared by the tests: their HF twin, our model and a tokenizer folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

TINY_LLAMA = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=96, hidden_size=32,
    intermediate_size=64, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
    bos_token_id=1, eos_token_id=2, pad_token_id=0,
)
TINY_QWEN2 = dict(TINY_LLAMA, architectures=["Qwen2ForCausalLM"], model_type="qwen2", tie_word_embeddings=True)
TINY_OPT = dict(
    architectures=["OPTForCausalLM"], model_type="opt", vocab_size=96, hidden_size=32, ffn_dim=64,
    num_hidden_layers=6, num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32,
    do_layer_norm_before=True, activation_function="relu", bos_token_id=1, eos_token_id=2, pad_token_id=0,
    dropout=0.0, attention_dropout=0.0,
)
TINY_OPT_POST_LN = dict(TINY_OPT, do_layer_norm_before=False, word_embed_proj_dim=16)
TINY = {"llama": TINY_LLAMA, "qwen2": TINY_QWEN2, "opt": TINY_OPT, "opt-350m-style": TINY_OPT_POST_LN}


def make_hf(config: dict, seed: int = 0):
    """A transformers model with random weights (made larger than default so logits differ)."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.AutoConfig.for_model(**{k: v for k, v in config.items() if k != "architectures"})
    cfg.architectures = config["architectures"]
    model = getattr(transformers, config["architectures"][0])(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2 if p.dim() > 1 else 0.1)
            if p.dim() == 1 and p.shape[0] == cfg.hidden_size:
                p.add_(1.0)  # norm weights around 1
    return model


def write_tokenizer(path: Path, vocab_size: int) -> None:
    """A word-level tokenizer over the tiny vocabulary (ids 0-2 special, then w3, w4, ...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(["<pad>", "<s>", "</s>"])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "<pad>"}))


def save_checkpoint(hf_model, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(path)
    write_tokenizer(path, hf_model.config.vocab_size)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """HF checkpoint folders of every tiny family, saved once per test session."""
    root = tmp_path_factory.mktemp("ckpt")
    return {name: save_checkpoint(make_hf(cfg), root / name) for name, cfg in TINY.items()}


@pytest.fixture(scope="session")
def tiny_models(tiny_checkpoints):
    """name -> (transformers model, our LoadedModel) with the same weights."""
    import transformers
    from skipdecode.models import load_model

    out = {}
    for name, path in tiny_checkpoints.items():
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        out[name] = (hf, load_model(str(path)))
    return out


# ---- tiny exports (ONNX), made once per session and shared by export, runtime and CLI tests ----
# The tiny configs above have head_dim 8, below what ORT's CPU GroupQueryAttention takes (a
# multiple of 16), so the GQA exports widen hidden_size to 64 (head_dim 16); the plain configs
# exercise the standard-op fallback.

GQA_CONFIGS = {
    "llama-gqa": dict(TINY["llama"], hidden_size=64),
    "opt-gqa": dict(TINY["opt"], hidden_size=64),
}
# name -> (checkpoint config, target)
EXPORTS = {
    "llama-gqa": ("llama-gqa", "onnxruntime"),
    "opt-gqa": ("opt-gqa", "onnxruntime"),
    "llama-trt": ("llama-gqa", "tensorrt"),
    "opt350-std": ("opt-350m-style", "onnxruntime"),  # head_dim 8: standard-op fallback
}


@pytest.fixture(scope="session")
def export_checkpoints(tmp_path_factory, tiny_checkpoints):
    root = tmp_path_factory.mktemp("export-ckpt")
    out = dict(tiny_checkpoints)
    for name, cfg in GQA_CONFIGS.items():
        out[name] = save_checkpoint(make_hf(cfg, seed=1), root / name)
    return out


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, export_checkpoints):
    """tiny_export(name) -> (export folder, LoadedModel); exported and validated on first use."""
    from skipdecode.export import ExportConfig, export_model
    from skipdecode.models import load_model

    root = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(name: str):
        if name not in cache:
            ckpt, target = EXPORTS[name]
            loaded = load_model(str(export_checkpoints[ckpt]))
            results = export_model(str(export_checkpoints[ckpt]), root / name,
                                   ExportConfig(target=target, max_seq=96), loaded=loaded, log=lambda s: None)
            cache[name] = (root / name, loaded, results[target])
        return cache[name]

    return get
