"""A numpy fake backend for engine tests (nanochat's mock model): exact integer arithmetic whose
logits depend on the token, its position, which layers ran and every key a layer attended over,
so a wrong row, position, layer set, move or a recomputed / missing KV entry changes the output
or raises. No torch, no weights."""

from __future__ import annotations

import numpy as np

M = 1_000_003


def embed(tok, pos):
    return (np.asarray(tok, np.int64) * 7919 + np.asarray(pos, np.int64) * 104729 + 13) % M


def key(h, l):
    return (h * (2 * l + 3) + 11 * l + 5) % M


def mix(h, l, s):
    return (h * 31 + s * (l + 7) + l) % M


def head(h, vocab):
    h = np.asarray(h, np.int64).reshape(-1, 1)
    return ((h * (2 * np.arange(vocab) + 1) + 7) % 101).astype(np.float32) / 10  # (B, V)


class FakeBackend:
    name = "fake"

    def __init__(self, num_layers: int = 6, vocab: int = 24, max_positions: int = 256):
        self.num_layers, self.vocab, self.max_positions = num_layers, vocab, max_positions
        self.capture = None
        self.calls: list[tuple] = []

    def allocate(self, rows: int, max_len: int) -> None:
        self.rows, self.max_len = rows, max_len
        self.kv = np.zeros((self.num_layers, rows, max_len), np.int64)
        self.written = np.zeros((self.num_layers, rows, max_len), bool)
        self.calls = []

    def prefill(self, start, ids, lengths, layers):
        n, S = ids.shape
        assert start + n <= self.rows and S <= self.max_len, "prefill outside the buffers"
        self.calls.append(("prefill", (start, start + n), tuple(layers)))
        out = []
        for i in range(n):
            r, length = start + i, int(lengths[i])
            self.written[:, r] = False
            h = embed(ids[i, :length], np.arange(length))
            for l in layers:
                self.kv[l, r, :length] = key(h, l)
                self.written[l, r, :length] = True
                h = mix(h, l, np.cumsum(self.kv[l, r, :length]) % M)
            out.append(h[-1])
        return head(np.array(out), self.vocab)

    def decode(self, ids, positions, ranges):
        assert len(ranges) == self.num_layers
        self.calls.append(("decode", [tuple(r) for r in ranges]))
        h = embed(ids, positions)
        for l, (a, b) in enumerate(ranges):
            for r in range(a, b):
                p = int(positions[r])
                if p >= self.max_len:
                    raise RuntimeError(f"KV overflow: row {r} position {p}")
                if not self.written[l, r, :p].all() or self.written[l, r, p]:
                    raise RuntimeError(f"layer {l} row {r}: KV must hold exactly positions [0, {p})")
                self.kv[l, r, p] = key(h[r], l)
                self.written[l, r, p] = True
                h[r] = mix(h[r], l, self.kv[l, r, :p + 1].sum() % M)
        return head(h, self.vocab)

    def move(self, src, dst, length, layers):
        self.calls.append(("move", list(src), list(dst), length, tuple(layers)))
        kv, w = self.kv[:, src].copy(), self.written[:, src].copy()  # read every source first
        self.written[:, dst] = False
        for l in layers:
            self.kv[l, dst, :length] = kv[l][:, :length]
            self.written[l, dst, :length] = w[l][:, :length]


def reference(prompt, schedule, max_new, num_layers=6, vocab=24, eos=(2,), ignore_eos=False):
    """Greedy tokens computed position by position from the definitions (no buffers, no engine)."""
    kv = [dict() for _ in range(num_layers)]
    tokens, out = list(prompt), []
    sets = [schedule.prompt_layer_set()] * len(prompt)
    for p in range(max_new + len(prompt)):
        h = embed(tokens[p], p)
        for l in sets[p]:
            kv[l][p] = int(key(h, l))
            h = mix(h, l, sum(kv[l].values()) % M)
        if p < len(prompt) - 1:
            continue
        tok = int(head(h, vocab)[0].argmax())
        out.append(tok)
        if (tok in eos and not ignore_eos) or len(out) == max_new:
            return out
        tokens.append(tok)
        sets.append(schedule.layers_for_step(len(out) - 1))
    return out
