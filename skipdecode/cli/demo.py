"""`skipdecode demo`: the README's main job on the embedded default model.

Generates for a few E2E-style meaning representations at full depth and under a SkipDecode
schedule, side by side, with tokens/s of each, through the PyTorch reference backend.
"""

from __future__ import annotations

import sys

MRS = [
    "name[The Eagle], eatType[coffee shop], food[Japanese], priceRange[less than £20], area[riverside]",
    "name[The Mill], eatType[pub], food[English], area[city centre], familyFriendly[no]",
    "name[Blue Spice], eatType[restaurant], food[Chinese], customer rating[5 out of 5], near[Crowne Plaza Hotel]",
    "name[Zizzi], eatType[coffee shop], priceRange[high], customer rating[average], area[riverside]",
]
CHAT = "<|im_start|>user\nWrite one sentence describing this restaurant: {mr}<|im_end|>\n<|im_start|>assistant\n"


def add_arguments(p):
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m, an HF checkpoint folder or a .gguf file")
    p.add_argument("--speedup", type=float, default=3.0, help="target speedup of the skip schedule (default 3)")
    p.add_argument("--window", type=int, default=32, help="decay window in generated tokens (default 32)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)


def run(args) -> int:
    from skipdecode.cli.options import generate_texts
    from skipdecode.models import load_model
    from skipdecode.models.backend import TorchBackend
    from skipdecode.runtime import GenerationConfig
    from skipdecode.schedule import Schedule

    loaded = load_model(args.model)
    L = loaded.model.num_layers
    skip = loaded.schedule or Schedule.for_speedup(L, args.speedup, args.window)
    prompts = [CHAT.format(mr=mr) for mr in MRS]
    backend = TorchBackend(loaded.model)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    generate_texts(backend, loaded.tokenizer, prompts[:1], skip, config, 1, show_progress=False)  # warm-up
    results = {}
    for label, schedule in (("full", Schedule.full(L)), ("skip", skip)):
        rows, elapsed = generate_texts(backend, loaded.tokenizer, prompts, schedule, config, args.batch_size,
                                       show_progress=False)
        results[label] = (schedule, rows, elapsed)
    print(f"model: {args.model} ({L} layers), PyTorch reference on CPU, batch {args.batch_size}, greedy\n")
    for i, mr in enumerate(MRS):
        print(f"MR:   {mr}")
        for label, (_, rows, _) in results.items():
            print(f"{label}: {rows[i].text.strip()!r}  [{rows[i].tokens} tokens, mean layers {rows[i].mean_layers:.1f}]")
        print()
    for label, (schedule, rows, elapsed) in results.items():
        tokens = sum(r.tokens for r in rows)
        print(f"{label:>4}: {schedule.describe()}: {tokens / elapsed:.1f} tokens/s ({tokens} tokens, {elapsed:.2f} s)")
    if loaded.schedule is None and not results["skip"][0].is_full:
        print("\nnote: this checkpoint was not fine-tuned under a skip schedule, so its skip outputs degrade; "
              "fine-tune with `skipdecode train --speedup S` first.", file=sys.stderr)
    return 0
