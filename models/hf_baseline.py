"""transformers' ``generate`` as a benchmark baseline (`skipdecode bench --compare hf`).

Greedy, exactly ``new_tokens`` per row (min_new_tokens = max_new_tokens), full depth. The
time to the first token is read from a streamer: ``put`` is called once with the prompt and
then once per generated step.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from skipdecode.runtime.bench import RunTiming
from skipdecode.schedule import Schedule

CACHES = ("dynamic", "static")


class _Clock:
    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


class HFGenerateRunner:
    name = "hf"
    skips = False

    def __init__(self, path: str, cache: str = "dynamic", device: str = "cpu"):
        import transformers

        if cache not in CACHES:
            raise ValueError(f"cache must be one of {CACHES}, got {cache!r}")
        transformers.logging.set_verbosity_error()
        self.model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.device, self.cache = device, cache
        c = self.model.config
        eos = c.eos_token_id if c.eos_token_id is not None else 0
        self.pad_id = c.pad_token_id if c.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
        self.eos_id = eos
        self.note = f"transformers {transformers.__version__} generate, {cache} cache"
        self.transformers = transformers

    @torch.inference_mode()
    def run(self, prompts: np.ndarray, schedule: Schedule, new_tokens: int) -> RunTiming:
        if not schedule.is_full:
            raise ValueError("transformers' generate runs full depth only")
        ids = torch.from_numpy(prompts).to(self.device)  # (B, P)
        config = self.transformers.GenerationConfig(
            do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=self.pad_id,
            eos_token_id=self.eos_id, cache_implementation=self.cache)
        clock = _Clock()
        t0 = time.perf_counter()
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                  streamer=clock)  # (B, P + new_tokens)
        end = time.perf_counter()
        first = clock.times[1]  # times[0]: the prompt
        return RunTiming(first - t0, end - first, int(out.shape[0] * (out.shape[1] - ids.shape[1])))
