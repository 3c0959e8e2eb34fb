"""Measured parity of the PyTorch reference (what the tests bound at 1e-4), printed per family:
logits vs transformers at full depth (left-padded batch), and the SkipDecode invariant (training
forward vs step-by-step cached decoding) under a skip schedule.

    python scripts/parity_report.py
"""

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny import TINY, make_hf, save_checkpoint  # noqa: E402

from skipdecode.models import load_model  # noqa: E402
from skipdecode.models.backend import TorchBackend  # noqa: E402
from skipdecode.runtime.feeds import right_pad  # noqa: E402
from skipdecode.schedule import Schedule  # noqa: E402


def main() -> None:
    import tempfile

    import transformers

    sched = Schedule(6, 5, 2, window=6)
    print("family           logits vs transformers   training fwd vs cached decode (skip 5->2/6)")
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in TINY.items():
            path = save_checkpoint(make_hf(cfg), Path(tmp) / name)
            hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
            model = load_model(str(path)).model
            ids = torch.randint(3, 96, (3, 24), generator=torch.Generator().manual_seed(0))
            mask = torch.ones_like(ids)
            mask[1, :7] = 0
            with torch.no_grad():
                ref = hf(input_ids=ids, attention_mask=mask).logits
                got, _ = model(ids, mask)
                P = 12
                train, _ = model(ids, mask, schedule=sched, prompt_len=P)
            hf_err = (ref - got)[mask.bool()].abs().max().item()
            b = TorchBackend(model)
            b.allocate(3, 24)
            km = mask.bool().numpy()
            pids, lens = right_pad([ids[r, :P].numpy()[km[r, :P]].tolist() for r in range(3)], 0)
            steps = [b.prefill(0, pids, lens, range(6))]
            for t in range(24 - P - 1):
                run = sched.layers_for_step(t)
                steps.append(b.decode(ids[:, P + t].numpy(), lens + t, [(0, 3) if l in run else (0, 0) for l in range(6)]))
            inv_err = np.abs(np.stack(steps, 1) - train[:, P - 1:23].numpy()).max()
            print(f"{name:16} {hf_err:22.2e}   {inv_err:.2e}")


if __name__ == "__main__":
    main()
