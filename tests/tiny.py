"""Tiny random models and helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from skipdecode.schedule import Schedule

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


BLOCK_TORCH = """\
import sys
class _Block:  # an edge install: torch and transformers cannot be imported
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, _Block())
"""
CHECK_NO_TORCH = "\nassert not any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules)\n"


def run_without_torch(code: str):
    """Run ``code`` in a fresh interpreter where torch and transformers are unimportable, then
    check neither was imported. ``code`` sets ``rc`` to choose the exit status (default 0)."""
    import subprocess
    import sys

    full = BLOCK_TORCH + "rc = 0\n" + code + CHECK_NO_TORCH + "sys.exit(rc)\n"
    return subprocess.run([sys.executable, "-c", full], capture_output=True, text=True, timeout=180)


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


# The configs above have head_dim 8, below what ORT's CPU GroupQueryAttention takes (a multiple
# of 16), so the GQA exports widen hidden_size to 64 (head_dim 16); the plain configs exercise the
# standard-op fallback.
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


def with_adapters(loaded, rank, layers, scale: float | None = 0.3, seed: int = 0):
    """A copy of ``loaded``'s model (the fixture's is shared) with entry adapters at ``layers``,
    their matrices drawn at random (``scale``) or left at their init (None)."""
    import copy

    model = copy.deepcopy(loaded.model)
    adapters = model.add_entry_adapters(rank, layers, seed=seed)
    if scale is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in adapters.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def save_with_adapters(loaded, model, schedule, dst: Path) -> Path:
    """A checkpoint of ``model`` (``loaded``'s with entry adapters) that load_model reads back with
    them, its skipdecode.json recording ``schedule`` and the adapters, as training writes it."""
    from skipdecode.models.adapters import ENTRY_ADAPTER
    from skipdecode.training.checkpoint import save_checkpoint

    return save_checkpoint(model, loaded.path, dst, {"schedule": schedule.to_dict(),
                                                     ENTRY_ADAPTER: model.entry_adapters.spec()})

ADAPTER_SCHEDULE = Schedule(6, 4, 2, window=6)
"""The schedule of the tiny checkpoints with entry adapters (conftest.py adapter_export): the paper's
order with one warm-up layer, whose family enters layers 2..5 (every order with a warm-up layer
enters a subset of them)."""


def split_calls(calls):
    """A backend's call log -> ((first row, end row), layers) of its leading prefill calls merged,
    and the calls after them. The engine prefills a burst in one call per length group
    (EngineConfig.prefill_padding): the groups must tile the rows and share one layer set."""
    n = next((i for i, c in enumerate(calls) if c[0] != "prefill"), len(calls))
    assert n >= 1, calls[:1]
    ranges, layers = [c[1] for c in calls[:n]], {c[2] for c in calls[:n]}
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])) and len(layers) == 1, calls[:n]
    return ((ranges[0][0], ranges[-1][1]), layers.pop()), calls[n:]


def run_arrivals(engine, arrivals, max_steps: int = 5000) -> None:
    """Step ``engine`` until done, adding each (arrival step, Request) when its step comes."""
    pending = sorted(arrivals, key=lambda a: a[0])
    step = 0
    while pending or engine.has_work:
        while pending and pending[0][0] <= step:
            engine.add(pending.pop(0)[1])
        engine.step()
        step += 1
        assert step < max_steps, "the engine did not finish"


def solo_tokens(backend, request, max_len: int) -> list[int]:
    """``request``'s tokens generated alone (one KV row) on ``backend``."""
    from skipdecode.runtime import Engine, EngineConfig, Request

    alone = Request(request.prompt_ids, request.max_new_tokens, request.schedule, request.sampling,
                    ignore_eos=request.ignore_eos)
    return Engine(backend, [2], 0, EngineConfig(max_rows=1, max_len=max_len)).run([alone])[0].token_ids


def assert_greedy_matches_reference(backend, model, steps_checked: bool = True) -> None:
    """Greedy ids through ``backend`` equal the PyTorch reference's, at full depth and under a skip
    schedule, and each decode step ran exactly the schedule's layers."""
    from skipdecode.models.backend import TorchBackend
    from skipdecode.runtime import GenerationConfig, generate_ids

    prompts = [[5, 9, 14, 3, 22, 7], [31, 4], [8, 8, 40]]
    cfg = GenerationConfig(max_new_tokens=10, ignore_eos=True)
    for schedule in (Schedule.full(6), Schedule(6, 5, 2, window=6)):
        ref = generate_ids(TorchBackend(model), prompts, schedule, cfg, [2], 0, batch_size=3)
        got = generate_ids(backend, prompts, schedule, cfg, [2], 0, batch_size=3)
        assert [r.token_ids for r in got] == [r.token_ids for r in ref]
        decodes = [c for c in backend.calls if c[0] == "decode"]
        assert [tuple(l for l, (a, b) in enumerate(c[1]) if a < b) for c in decodes] == [
            schedule.layers_for_step(t) for t in range(9)]


def teacher_forced(backend, prompts, targets, schedule):
    """Decode on the engine, feeding the targets instead of sampling; returns logits (B, N, V) at
    the generated columns, and the left-padded ids and mask the training forward takes."""
    import numpy as np

    from skipdecode.runtime import Engine, EngineConfig, Request

    B, N = len(prompts), targets.shape[1]
    P = max(len(p) for p in prompts)
    engine = Engine(backend, (), 0, EngineConfig(B, P + N, prefill_padding=float("inf")), schedule)  # one call
    for p in prompts:
        engine.add(Request(p, N, schedule, ignore_eos=True))
    out = []
    for t in range(N):
        plan = engine.schedule()
        lp, ld = engine.execute(plan)
        out.append(lp if plan.prefill is not None else ld)  # rows in prompt order: one depth, arrival order
        engine.update(plan, lp, ld, tokens=targets[:, t])
    assert not engine.has_work
    ids = np.zeros((B, P), dtype=np.int64)
    mask = np.zeros((B, P), dtype=bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):], mask[i, P - len(p):] = p, True
    return np.stack(out, 1), ids, mask


def forward_vs_decoding(model, schedule, N: int = 9, seed: int = 0) -> float:
    """The largest difference between the training forward's logits and teacher-forced decoding's
    on the engine through the PyTorch reference (TorchBackend), for three prompts of different
    lengths and N random targets each."""
    import numpy as np

    from skipdecode.models.backend import TorchBackend

    prompts = [[5, 9, 14, 3, 22], [31, 4], [7, 7, 7]]
    targets = np.random.default_rng(seed).integers(3, model.config.vocab_size, (len(prompts), N))
    stepwise, ids, mask = teacher_forced(TorchBackend(model), prompts, targets, schedule)
    P = ids.shape[1]
    full_ids = torch.from_numpy(np.concatenate([ids, targets], 1))
    full_mask = torch.from_numpy(np.concatenate([mask, np.ones_like(targets, dtype=bool)], 1))
    with torch.no_grad():
        logits, _ = model(full_ids, full_mask, schedule=schedule, prompt_len=P)
    train = logits[:, P - 1:P - 1 + N].numpy()  # column P-1+t predicts target t
    return float(np.abs(train - stepwise).max())
