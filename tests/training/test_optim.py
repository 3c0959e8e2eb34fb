"""The optimizer (training/optim.py): fused AdamW on a CPU, the same update as torch's default."""

import torch

from skipdecode.training.config import TrainConfig
from skipdecode.training.optim import lr_factor, make_optimizer, param_groups


def test_fused_adamw_matches_the_default_update(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    twin = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    twin.load_state_dict(model.state_dict())
    cfg = TrainConfig(out=tmp_path, max_steps=5, lr=1e-2, weight_decay=0.1, warmup_steps=1)
    fused, schedule = make_optimizer(model, cfg, 5)
    assert fused.defaults["fused"] and [g["weight_decay"] for g in fused.param_groups] == [0.1, 0.0]
    plain = torch.optim.AdamW(param_groups(twin, 0.1), lr=1e-2)  # torch's default implementation
    plain_schedule = torch.optim.lr_scheduler.LambdaLR(plain, lambda s: lr_factor(s, 1, 5))
    x = torch.randn(8, 16)
    for _ in range(5):
        for m, opt, sched in ((model, fused, schedule), (twin, plain, plain_schedule)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
            sched.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
