"""OpenAI request bodies (pydantic, strict types): what the server accepts, and the 400s for
what it does not.

Unknown fields are ignored (clients such as LangChain send their own), but a known field with
the wrong type, out of range, or asking for something this server does not do (logprobs, echo,
best_of, penalties, tools) is a 400 naming the field. The ``skipdecode`` object is ours and
strict: ``{"speedup": 2.0}`` or ``{"schedule": {...}}`` (a Schedule's fields).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from skipdecode.runtime.sampling import SamplingConfig

MAX_STOP = 16
DEFAULT_COMPLETION_TOKENS = 16
"""OpenAI's default max_tokens for /v1/completions; chat defaults to all the row has left."""


class SkipDecodeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    speedup: float | None = Field(None, ge=1, description="solve a schedule for this layer speedup (1: full depth)")
    schedule: dict[str, Any] | None = Field(None, description="an explicit schedule: Schedule.to_dict() fields")

    @model_validator(mode="after")
    def _one(self):
        if self.speedup is not None and self.schedule is not None:
            raise ValueError("give a speedup or a schedule, not both")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class _Generation(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2, description="default 1 (OpenAI's); 0 is greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, description="extension: keep the k most likely tokens (0: all)")
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(False, description="extension: generate exactly max_tokens (benchmarks)")
    skipdecode: SkipDecodeOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return v

    def _unsupported(self) -> list[str]:
        out = [name for name in ("presence_penalty", "frequency_penalty") if getattr(self, name)]
        return out + (["logit_bias"] if self.logit_bias else [])

    @model_validator(mode="after")
    def _supported(self):
        bad = self._unsupported()
        if bad:
            raise ValueError(f"{bad[0]} is not supported by skipdecode serve")
        return self

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def sampling(self) -> SamplingConfig:
        t = 1.0 if self.temperature is None else self.temperature
        return SamplingConfig(t, self.top_k or 0, 1.0 if self.top_p is None else self.top_p, self.seed)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Generation):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _nonempty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be an empty list")
        return v

    def _unsupported(self) -> list[str]:
        out = super()._unsupported()
        return out + [k for k, bad in (("echo", self.echo), ("best_of", (self.best_of or 1) > 1),
                                       ("logprobs", self.logprobs is not None), ("suffix", bool(self.suffix))) if bad]

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, v):
        if isinstance(v, list) and any(p.type != "text" or p.text is None for p in v):
            raise ValueError("only text content parts are supported")
        return v

    def for_template(self) -> dict:
        c = self.content
        text = c if isinstance(c, str) else "\n".join(p.text for p in c) if c else ""
        out = {"role": self.role, "content": text}
        if self.name:
            out["name"] = self.name
        return out


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    def _unsupported(self) -> list[str]:
        out = super()._unsupported()
        fmt = (self.response_format or {}).get("type", "text")
        return out + [k for k, bad in (("logprobs", bool(self.logprobs)), ("top_logprobs", bool(self.top_logprobs)),
                                       ("tools", bool(self.tools)), ("tool_choice", self.tool_choice not in (None, "none")),
                                       ("response_format", fmt != "text")) if bad]

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
