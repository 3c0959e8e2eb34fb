"""Our models against transformers' reference implementations with the same weights."""

import pytest
import torch

from skipdecode.models.backend import TorchBackend
from skipdecode.runtime import GenerationConfig, generate_ids
from skipdecode.schedule import Schedule

FAMILIES = ["llama", "qwen2", "opt", "opt-350m-style"]


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers(tiny_models, name):
    hf, ours = tiny_models[name]
    torch.manual_seed(1)
    ids = torch.randint(3, 96, (3, 13))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    mask[2, :1] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got, _ = ours.model(ids, mask)
    valid = mask.bool()
    assert (ref - got)[valid].abs().max().item() < 1e-4


@pytest.mark.parametrize("name", FAMILIES)
def test_loss_matches_transformers(tiny_models, name):
    hf, ours = tiny_models[name]
    ids = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        ref = hf(input_ids=ids, labels=labels).loss
        _, loss = ours.model(ids, labels=labels)
        _, loss_sliced = ours.model(ids, labels=labels, logits_start=3)  # head on targets only
    assert abs(ref.item() - loss.item()) < 1e-5
    assert abs(loss_sliced.item() - loss.item()) < 1e-5


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_generation_matches_transformers_generate(tiny_models, name):
    hf, ours = tiny_models[name]
    prompts = [[5, 9, 14, 3, 22, 7], [31, 4], [8, 8, 40, 12]]
    new = 12
    got = generate_ids(TorchBackend(ours.model), prompts, Schedule.full(ours.model.num_layers),
                       GenerationConfig(max_new_tokens=new), eos_ids=[2], pad_id=0, batch_size=3)
    for prompt, row in zip(prompts, got):  # transformers one prompt at a time: no padding there
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False,
                              eos_token_id=2, pad_token_id=0)
        assert row.token_ids == out[0, len(prompt):].tolist()


def test_greedy_batched_matches_transformers_batched(tiny_models):
    hf, ours = tiny_models["llama"]
    prompts = [[5, 9, 14, 3, 22, 7], [31, 4]]
    ids = torch.tensor([[5, 9, 14, 3, 22, 7], [0, 0, 0, 0, 31, 4]])
    mask = (torch.arange(6)[None] >= torch.tensor([[0], [4]])).long()
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, eos_token_id=2, pad_token_id=0)
    got = generate_ids(TorchBackend(ours.model), prompts, Schedule.full(6), GenerationConfig(max_new_tokens=10),
                       eos_ids=[2], pad_id=0, batch_size=2)
    for i, row in enumerate(got):
        ref = out[i, 6:].tolist()
        assert row.token_ids == ref[: len(row.token_ids)]


@pytest.mark.parametrize("rope", [
    {"rope_type": "linear", "rope_theta": 5000.0, "factor": 4.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
])
def test_rope_scaling_matches_transformers(tmp_path, rope):
    import transformers
    from tiny import TINY_LLAMA, make_hf, save_checkpoint
    from skipdecode.models import load_model

    cfg = {k: v for k, v in TINY_LLAMA.items() if k != "rope_theta"}
    path = save_checkpoint(make_hf({**cfg, "rope_parameters": rope}), tmp_path / "m")
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    ours = load_model(str(path)).model
    assert ours.config.rope_scaling["rope_type"] == rope["rope_type"]
    ids = torch.randint(3, 96, (1, 100), generator=torch.Generator().manual_seed(0))  # past the original 16
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - ours(ids)[0]).abs().max().item() < 1e-4


def test_pytorch_bin_checkpoint_loads(tmp_path, tiny_models):
    from tiny import write_tokenizer
    from skipdecode.models import load_model

    hf, ref = tiny_models["opt"]
    hf.config.save_pretrained(tmp_path)  # transformers 5 writes safetensors only: write the .bin by hand
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    write_tokenizer(tmp_path, hf.config.vocab_size)
    assert (tmp_path / "pytorch_model.bin").exists() and not list(tmp_path.glob("*.safetensors"))
    ids = torch.randint(3, 96, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_model(str(tmp_path)).model(ids)[0], ref.model(ids)[0])
