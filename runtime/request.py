"""What goes into the engine (a Request) and what comes out (TokenEvents while it runs, a
RowResult when it ends). Plain data, no behaviour beyond validation."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from skipdecode.runtime.sampling import SamplingConfig
from skipdecode.schedule import Schedule

FINISH_REASONS = ("eos", "stop", "length", "cancelled")
_ids = itertools.count()


@dataclass(frozen=True)
class Request:
    prompt_ids: tuple[int, ...]
    max_new_tokens: int = 64
    schedule: Schedule | None = None
    """The request's own schedule (a speed/quality point); None: the engine's default."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Greedy by default; a seed makes the request's draws its own, whatever shares its batch."""
    stop: tuple[str, ...] = ()
    """Stop strings: the request ends at the first one, which is cut from the text."""
    ignore_eos: bool = False
    """Generate exactly max_new_tokens (benchmarks)."""
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")

    def __post_init__(self):
        object.__setattr__(self, "prompt_ids", tuple(int(i) for i in self.prompt_ids))
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class TokenEvent:
    """One new token of one request, from one engine step."""

    request_id: str
    token_id: int
    text: str
    """The text this token made visible ('' without a tokenizer, or while a character or a
    possible stop string is incomplete); the last event of a request flushes what was held."""
    finish_reason: str | None = None
    """Set on the request's last event."""


@dataclass
class RowResult:
    """A finished request."""

    prompt_ids: list[int]
    token_ids: list[int]
    """Generated ids, without the prompt; EOS included when it ended the request."""
    finish_reason: str  # one of FINISH_REASONS
    mean_layers: float
    """Mean n_t over the generated tokens (token t runs n_t layers)."""
    text: str = ""
    prompt: str | None = None
    prefill_s: float = 0.0
    """This request's share of its prefill call's wall time (the call's seconds / its rows):
    summed over requests, the prompt processing, so decode-only speed is tokens / (wall - prefill)."""
    request_id: str = ""
    arrival_s: float = 0.0
    """perf_counter() when the request was added; first_token_s and finish_s likewise."""
    first_token_s: float = 0.0
    finish_s: float = 0.0

    @property
    def tokens(self) -> int:
        return len(self.token_ids)

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """Mean seconds per output token after the first (None for a single token)."""
        return (self.finish_s - self.first_token_s) / (self.tokens - 1) if self.tokens > 1 else None
