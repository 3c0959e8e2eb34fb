"""The PyTorch reference as a runtime backend: it plugs into runtime/'s interface from the
model side, so the runtime never imports torch.

KV rows are right-padded like the exported graphs' (row r's position p at index p), and every
call runs a contiguous range of rows, so the reference checks the engine's bookkeeping exactly as
the ONNX Runtime and TensorRT backends do: a layer asked to write a position it has not reached,
or one it already holds, raises. Entry adapters apply as in the model's own paths
(``SkipLM.enter``): to the rows that run a layer without the one below.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from skipdecode.models.base import SkipLM
from skipdecode.runtime.backend import Range, entering_rows
from skipdecode.runtime.feeds import KVLengths, check_capacity
from skipdecode.schedule import entries


class TorchBackend:
    name = "torch"

    def __init__(self, model: SkipLM):
        self.model = model
        self.num_layers = model.num_layers
        self.max_positions = model.config.max_position_embeddings
        self.device = next(model.parameters()).device
        self.capture = None
        self.calls: list[tuple] = []

    def allocate(self, rows: int, max_len: int) -> None:
        c, p = self.model.config, next(self.model.parameters())
        shape = (rows, c.num_kv_heads, max_len, c.head_dim)  # (R, H_kv, T, D)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=self.device) for _ in range(self.num_layers)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=self.device) for _ in range(self.num_layers)]
        self.kv_lengths = KVLengths(self.num_layers, rows)
        self.max_len = max_len
        self.calls = []

    def _t(self, a) -> torch.Tensor:
        return torch.tensor(np.asarray(a), device=self.device)

    @torch.inference_mode()
    def prefill(self, start: int, ids: np.ndarray, lengths: np.ndarray, layers: Sequence[int]) -> np.ndarray:
        n, S = ids.shape
        check_capacity(S, self.max_len)
        rows = slice(start, start + n)
        self.calls.append(("prefill", (start, start + n), tuple(layers)))
        pos = self._t(np.broadcast_to(np.arange(S), (n, S)))  # (n, S)
        hidden = self.model.embed(self._t(ids), pos)  # (n, S, hidden)
        rope = self.model.rope(pos)
        valid = self._t(np.arange(S)[None, :] < np.asarray(lengths)[:, None])  # (n, S) real keys
        causal = torch.ones(S, S, dtype=torch.bool, device=self.device).tril()
        mask = (valid[:, None, :] & causal[None]) | torch.eye(S, dtype=torch.bool, device=self.device)[None]
        mask = mask[:, None]  # (n, 1, S, S): a padding query sees itself, so no row is all-masked
        self.kv_lengths.prefill(start, lengths, layers)
        entering = entries(layers)
        for l in layers:
            if l in entering:
                hidden = self.model.enter(l, hidden)

            def kv(k, v, l=l):  # k, v: (n, H_kv, S, D)
                self.k[l][rows, :, :S], self.v[l][rows, :, :S] = k, v
                return k, v
            hidden = self.model.decoder_layers[l](hidden, rope, mask, kv)
        last = hidden[torch.arange(n), self._t(np.asarray(lengths) - 1)]  # (n, hidden)
        return self.model.head(last).float().cpu().numpy()  # (n, V)

    @torch.inference_mode()
    def decode(self, ids: np.ndarray, positions: np.ndarray, ranges: Sequence[Range]) -> np.ndarray:
        B = len(ids)
        self.calls.append(("decode", [tuple(r) for r in ranges]))
        check_capacity(int(np.max(positions)) + 1, self.max_len)
        pos = self._t(np.asarray(positions)[:, None])  # (B, 1)
        hidden = self.model.embed(self._t(np.asarray(ids)[:, None]), pos)  # (B, 1, hidden)
        rope = self.model.rope(pos)
        for l, (a, b) in enumerate(ranges):
            if a == b:
                continue
            p = np.asarray(positions[a:b])
            self.kv_lengths.check(l, a, b, p)
            T = int(p.max()) + 1
            idx = self._t(np.arange(b - a))
            pt = self._t(p)
            mask = (torch.arange(T, device=self.device)[None, :] <= pt[:, None])[:, None, None]  # (n, 1, 1, T)

            def kv(k, v, l=l, a=a, b=b, T=T, idx=idx, pt=pt):  # k, v: (n, H_kv, 1, D)
                self.k[l][a + idx, :, pt] = k[:, :, 0]
                self.v[l][a + idx, :, pt] = v[:, :, 0]
                return self.k[l][a:b, :, :T], self.v[l][a:b, :, :T]

            part_rope = None if rope is None else tuple(r[a:b] for r in rope)
            part = hidden[a:b]  # (n, 1, hidden)
            if self.model.entry_adapters is not None and l > 0:
                for lo, hi in entering_rows((a, b), ranges[l - 1]):  # rows that run l but skipped l - 1
                    part = torch.cat([part[:lo - a], self.model.enter(l, part[lo - a:hi - a]), part[hi - a:]])
            out = self.model.decoder_layers[l](part, part_rope, mask, kv)
            hidden = torch.cat([hidden[:a], out, hidden[b:]])
            self.kv_lengths.advance(l, a, b)
        return self.model.head(hidden[:, 0]).float().cpu().numpy()  # (B, V)

    def move(self, src: Sequence[int], dst: Sequence[int], length: int, layers: Sequence[int]) -> None:
        self.calls.append(("move", list(src), list(dst), length, tuple(layers)))
        s, d = self._t(np.asarray(src)), self._t(np.asarray(dst))
        self.kv_lengths.move(src, dst, layers)
        for l in layers:
            self.k[l][d, :, :length] = self.k[l][s, :, :length].clone()
            self.v[l][d, :, :length] = self.v[l][s, :, :length].clone()
