"""The OpenAI semantics: a validated body -> engine Requests (a Job), and engine output -> the
JSON of responses and stream chunks. No HTTP here (app.py) and no threads (bridge.py).

A Job has one engine request per choice: prompts x n, in OpenAI's choice order (prompt-major).
``usage`` counts each prompt once, every choice's tokens, and adds ``mean_layers``: the
token-weighted mean of decoder layers the request's tokens ran (``layer_speedup`` = L / it).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from skipdecode.errors import SkipDecodeError
from skipdecode.runtime.request import Request, RowResult
from skipdecode.serve.errors import APIError
from skipdecode.serve.protocol import DEFAULT_COMPLETION_TOKENS, ChatCompletionRequest, CompletionRequest

FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "abort"}


@dataclass
class Job:
    chat: bool
    id: str
    model: str
    requests: list[Request]
    prompt_tokens: int
    num_layers: int
    stream: bool = False
    include_usage: bool = False
    created: int = 0

    def index(self, request_id: str) -> int:
        return self._index[request_id]

    def __post_init__(self):
        self.created = self.created or int(time.time())
        self._index = {r.request_id: i for i, r in enumerate(self.requests)}

    # ---- whole responses ------------------------------------------------------------------------
    def usage(self, results: list[RowResult]) -> dict:
        tokens = sum(r.tokens for r in results)
        mean = sum(r.mean_layers * r.tokens for r in results) / tokens if tokens else 0.0
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": tokens,
                "total_tokens": self.prompt_tokens + tokens, "mean_layers": round(mean, 4),
                "layer_speedup": round(self.num_layers / mean, 4) if mean else None}

    def response(self, results: list[RowResult]) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                        "finish_reason": FINISH[r.finish_reason]} for i, r in enumerate(results)]
        else:
            choices = [{"index": i, "text": r.text, "logprobs": None, "finish_reason": FINISH[r.finish_reason]}
                       for i, r in enumerate(results)]
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, "usage": self.usage(results)}

    # ---- stream chunks ------------------------------------------------------------------------
    def chunk(self, index: int, text: str | None, finish: str | None = None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return self._chunk([choice])

    def usage_chunk(self, results: list[RowResult]) -> dict:
        return self._chunk([], self.usage(results))

    def _chunk(self, choices: list, usage: dict | None = None) -> dict:
        out = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
               "created": self.created, "model": self.model, "choices": choices}
        if self.include_usage:
            out["usage"] = usage
        return out


def check_model(body, model: str) -> None:
    if body.model is not None and body.model != model:
        raise APIError(404, f"the model {body.model!r} does not exist; this server serves {model!r}", "model",
                       "model_not_found")


def completion_job(body: CompletionRequest, bridge, model: str) -> Job:
    check_model(body, model)
    tok = bridge.tokenizer
    prompts = [tok.encode(p) if isinstance(p, str) else _check_ids(p, tok.vocab_size) for p in body.prompts]
    return _job(body, bridge, model, prompts, body.max_tokens, DEFAULT_COMPLETION_TOKENS, chat=False)


def chat_job(body: ChatCompletionRequest, bridge, template, model: str) -> Job:
    check_model(body, model)
    if template is None:
        raise APIError(400, "this export has no chat template (chat_template.jinja or tokenizer_config.json's "
                       "chat_template); use /v1/completions", "messages", "no_chat_template")
    try:
        text = template.render([m.for_template() for m in body.messages], add_generation_prompt=True)
    except SkipDecodeError as e:
        raise APIError(400, str(e), "messages") from None
    ids = bridge.tokenizer.encode(text, add_special_tokens=False)  # the template wrote the special tokens
    return _job(body, bridge, model, [ids], body.limit, None, chat=True)


def _check_ids(ids: list[int], vocab: int) -> list[int]:
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", "prompt")
    return ids


def _job(body, bridge, model: str, prompts: list[list[int]], max_tokens: int | None, default: int | None,
         chat: bool) -> Job:
    if len(prompts) * body.n > bridge.config.max_choices:
        raise APIError(400, f"{len(prompts)} prompts x n={body.n} = {len(prompts) * body.n} choices, above this "
                       f"server's {bridge.config.max_choices}", "n")
    opts = body.skipdecode
    try:
        schedule = bridge.schedule_for(opts.speedup if opts else None, opts.schedule if opts else None)
    except SkipDecodeError as e:
        raise APIError(400, str(e), "skipdecode", "invalid_schedule") from None
    limit = bridge.max_len
    job_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    requests = []
    for p, ids in enumerate(prompts):
        P = len(ids)
        if P == 0:
            raise APIError(400, "the prompt is empty (it encodes to no tokens)", "messages" if chat else "prompt")
        if P >= limit:
            raise APIError(400, f"the prompt is {P} tokens, longer than the export's max_seq {limit} allows "
                           f"(at most {limit - 1}, leaving one position to generate)",
                           "messages" if chat else "prompt", "context_length_exceeded")
        room = limit - P
        if max_tokens is not None and max_tokens > room:
            param = "max_completion_tokens" if chat and body.max_completion_tokens is not None else "max_tokens"
            raise APIError(400, f"{param} {max_tokens} is above the limit: the prompt's {P} tokens leave {room} of "
                           f"the export's max_seq {limit}", param, "context_length_exceeded")
        new = max_tokens if max_tokens is not None else min(default or room, room)
        for j in range(body.n):
            sampling = body.sampling
            if sampling.seed is not None and j:
                sampling = type(sampling)(sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed + j)
            requests.append(Request(tuple(ids), new, schedule, sampling, body.stops, body.ignore_eos,
                                    request_id=f"{job_id}-{p * body.n + j}"))
    return Job(chat, job_id, model, requests, sum(map(len, prompts)), schedule.num_layers, body.stream,
               body.include_usage)
