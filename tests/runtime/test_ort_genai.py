"""ONNX Runtime GenAI as `skipdecode bench --compare ort-genai`: built once and cached, exact
token counts, the reference's greedy tokens; OPT is refused with a clear error."""

import json

import pytest

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.bench import make_prompts
from skipdecode.runtime.ort_genai import STAMP, build_model
from skipdecode.schedule import Schedule

from tiny import TINY_LLAMA, make_hf, save_checkpoint


def test_opt_is_refused_before_building(tiny_checkpoints, tmp_path):
    with pytest.raises(SkipDecodeError, match="does not support OPT"):
        build_model(tiny_checkpoints["opt"], tmp_path)
    assert not any(tmp_path.iterdir())


def test_build_cache_and_run(tmp_path):
    pytest.importorskip("onnxruntime_genai")
    from skipdecode.models import load_model
    from skipdecode.models.backend import TorchBackend
    from skipdecode.runtime import GenerationConfig, generate_ids
    from skipdecode.runtime.ort_genai import OrtGenAIRunner

    # ORT's GroupQueryAttention needs head_size % 16 == 0: hidden 64 over 4 heads
    ckpt = save_checkpoint(make_hf(dict(TINY_LLAMA, hidden_size=64)), tmp_path / "llama16")
    out = build_model(ckpt, tmp_path / "build")  # ~15 s: the builder imports torch and transformers
    stamp = (out / STAMP).stat().st_mtime_ns
    assert build_model(ckpt, tmp_path / "build") == out and (out / STAMP).stat().st_mtime_ns == stamp  # cached
    assert json.loads((out / STAMP).read_text())["precision"] == "fp32"

    runner = OrtGenAIRunner(out)
    prompts = make_prompts(96, 3, 5, seed=1)
    t = runner.run(prompts, Schedule.full(6), 6)
    assert t.tokens == 3 * 6 and t.ttft_s > 0 and t.decode_s > 0
    ref = generate_ids(TorchBackend(load_model(str(ckpt)).model), prompts.tolist(), Schedule.full(6),
                       GenerationConfig(6, ignore_eos=True), eos_ids=[], pad_id=0)
    expected = [until_eos(b.token_ids, b) for b in ref]
    assert [until_eos(a, b) for a, b in zip(runner.last_tokens, ref)] == expected
    assert sum(map(len, expected)) >= 9  # most of the 18 tokens are compared


def until_eos(tokens, ref_row, eos=2):
    """The baseline masks EOS until the last token (min_length); the reference ignores it after
    picking it. Compare up to the reference's first EOS."""
    ids = ref_row.token_ids
    return list(tokens[:ids.index(eos)] if eos in ids else tokens)
