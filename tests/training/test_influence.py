"""Block influence (training/influence.py): a layer that leaves the hidden state unchanged has
influence 0 and is dropped first; the order it gives is a valid drop order."""

import torch

from skipdecode.models import load_model
from skipdecode.schedule import Schedule
from skipdecode.training.batches import collate
from skipdecode.training.influence import block_influence, influence_order, layer_influence


def test_an_identity_layer_has_no_influence_and_is_dropped_first(train_llama):
    model = load_model(str(train_llama)).model.eval()
    for proj in (model.decoder_layers[3].self_attn.o_proj, model.decoder_layers[3].mlp.down_proj):
        torch.nn.init.zeros_(proj.weight)  # layer 3 adds nothing to the residual stream: h_out == h_in
    batch = collate([([5, 9, 14], [22, 31, 2]), ([7], [8, 9, 10, 2])], pad_id=0)
    generated = batch.attention_mask & (torch.arange(batch.input_ids.shape[1]) >= batch.prompt_len)[None]
    influence = layer_influence(model, batch.input_ids, batch.attention_mask, generated)
    assert len(influence) == 6 and influence[3] < 1e-6 and all(0 < v <= 2 for i, v in enumerate(influence) if i != 3)
    order = influence_order(influence, warmup_layers=1)
    assert order[0] == 3 and sorted(order) == [1, 2, 3, 4, 5]
    s = Schedule.constant(6, 5, drop_order=order)
    assert 3 not in s.layers_for_step(0)
    everywhere = layer_influence(model, batch.input_ids, batch.attention_mask)  # every real token
    assert everywhere != influence and everywhere[3] < 1e-6


def test_block_influence_is_one_minus_cosine_over_the_masked_tokens():
    h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # (1, 3, 2)
    out = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [-1.0, 9.0]]])
    assert block_influence(h, out, torch.tensor([[True, True, False]])) == 0.5  # (0 + 1) / 2
    assert abs(block_influence(h, h, torch.ones(1, 3, dtype=torch.bool))) < 1e-6
