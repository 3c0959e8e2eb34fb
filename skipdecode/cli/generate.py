"""`skipdecode generate`: the PyTorch reference under a skip schedule."""

from __future__ import annotations

import sys

from skipdecode.cli import options


def add_arguments(p):
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m, an HF checkpoint folder or a .gguf file")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    options.add_generation_arguments(p)


def run(args) -> int:
    import torch

    from skipdecode.errors import SkipDecodeError
    from skipdecode.models import load_model
    from skipdecode.models.backend import TorchBackend
    from skipdecode.runtime.api import Runtime

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SkipDecodeError("--device cuda: no CUDA device is available")
    prompts = options.read_prompts(args)
    config = options.generation_config(args)
    loaded = load_model(args.model, args.device, getattr(torch, args.dtype))
    schedule = options.build_schedule(args, loaded.model.num_layers, loaded.schedule, loaded.facts)
    rt = Runtime(TorchBackend(loaded.model), loaded.tokenizer)
    run = rt.timed(prompts, schedule, show_progress=args.input is not None, max_new_tokens=config.max_new_tokens,
                   batch_size=args.batch_size, sampling=config.sampling, stop=config.stop)
    options.emit(run.rows, args.output)
    print(options.summary(run, schedule), file=sys.stderr)
    return 0
