"""Where the PyTorch reference spends a decode step (batch 1 by default).

1. components, timed directly (medians): a decode step with 0 layers (embed, RoPE, mask, LM
   head, numpy round trip) and with k layers, so per-layer cost = slope; the LM head alone;
2. torch.profiler over the decode phase of one generation: top operators by self CPU time.

    python scripts/profile_torch_decode.py --model smollm2-135m --batch-size 1 --speedup 1

For a Python-level view of the same run: py-spy record --native -o prof.svg -- python scripts/...
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--speedup", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from skipdecode.models import load_model
    from skipdecode.models.backend import TorchBackend
    from skipdecode.runtime import Engine, EngineConfig, Request
    from skipdecode.runtime.bench import make_prompts
    from skipdecode.schedule import Schedule

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model).model
    L, B, P = model.num_layers, args.batch_size, args.prompt_len
    backend = TorchBackend(model)
    prompts = make_prompts(model.config.vocab_size, B, P)
    print(f"{args.model}: batch {B}, prompt {P}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    # 1. components at one decode position (slot P, context P + 1)
    backend.allocate(B, P + 2)
    backend.prefill(0, prompts, np.full(B, P), tuple(range(L)))
    ids, pos = prompts[:, -1], np.full(B, P)

    def step(layers):
        backend.kv_lengths.held[:] = P  # rewrite position P each time
        return backend.decode(ids, pos, [(0, B) if l in layers else (0, 0) for l in range(L)])

    zero = median_ms(lambda: step(()), args.repeats)
    full = median_ms(lambda: step(tuple(range(L))), args.repeats)
    third = median_ms(lambda: step(tuple(range(L // 3))), args.repeats)
    hidden = torch.randn(B, 1, model.config.hidden_size)
    with torch.inference_mode():
        head = median_ms(lambda: model.head(hidden), args.repeats)
    per_layer = (full - zero) / L
    print(f"decode step, {L} layers: {full:.2f} ms; {L // 3} layers: {third:.2f} ms; 0 layers: {zero:.2f} ms")
    print(f"  per layer call: {1000 * per_layer:.0f} us ({1000 * (third - zero) / (L // 3):.0f} us from the "
          f"{L // 3}-layer step); LM head alone: {head:.2f} ms; rest of the 0-layer step "
          f"(embed, RoPE, mask, logits to numpy): {zero - head:.2f} ms")
    print(f"  shares of the full step: layers {100 * (full - zero) / full:.0f}%, LM head {100 * head / full:.0f}%, "
          f"other {100 * (zero - head) / full:.0f}%")

    # 2. operators over the decode phase of one generation
    sched = Schedule.full(L) if args.speedup == 1 else Schedule.for_speedup(L, args.speedup, args.new_tokens)
    engine = Engine(backend, (), 0, EngineConfig(B, P + args.new_tokens), sched)
    for p in prompts.tolist():
        engine.add(Request(p, args.new_tokens, sched, ignore_eos=True))
    engine.step()  # prefill and token 0 outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        while engine.has_work:
            engine.step()
        wall = time.perf_counter() - t0
    steps = args.new_tokens - 1
    print(f"\ndecode phase ({sched.describe()}): {1000 * wall / steps:.2f} ms/step under the profiler "
          f"(profiling adds overhead); top operators by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=40))


if __name__ == "__main__":
    main()
