"""Request bodies: strict types, OpenAI's defaults, and what is refused."""

from __future__ import annotations

import pytest

pytest.importorskip("pydantic")

from pydantic import ValidationError  # noqa: E402

from skipdecode.serve.protocol import ChatCompletionRequest, CompletionRequest  # noqa: E402


def test_openai_defaults_and_sampling():
    r = CompletionRequest.model_validate({"prompt": "w5", "unknown_client_field": 1})
    assert r.max_tokens is None and r.n == 1 and not r.stream and r.stops == ()
    assert (r.sampling.temperature, r.sampling.top_p, r.sampling.top_k) == (1.0, 1.0, 0)  # OpenAI's default
    r = CompletionRequest.model_validate({"prompt": "w5", "temperature": 0, "top_k": 5, "seed": 3, "stop": "w9"})
    assert r.sampling.greedy and r.sampling.seed == 3 and r.stops == ("w9",)


@pytest.mark.parametrize("prompt,expected", [("w5 w9", ["w5 w9"]), (["a", "b"], ["a", "b"]), ([5, 9], [[5, 9]]),
                                             ([[5], [9, 3]], [[5], [9, 3]])])
def test_the_four_prompt_forms(prompt, expected):
    assert CompletionRequest.model_validate({"prompt": prompt}).prompts == expected


@pytest.mark.parametrize("body", [
    {"prompt": "x", "max_tokens": "4"}, {"prompt": "x", "max_tokens": True}, {"prompt": "x", "n": 1.0},
    {"prompt": []}, {"prompt": [1, "a"]}, {"prompt": "x", "stop": ["a"] * 17}, {"prompt": "x", "echo": True},
    {"prompt": "x", "best_of": 2}, {"prompt": "x", "presence_penalty": 0.5}, {"prompt": "x", "logit_bias": {"5": 1}},
    {"prompt": "x", "skipdecode": {"speedup": "2"}}, {"prompt": "x", "stream_options": {"include_usage": "yes"}},
])
def test_refused_completion_bodies(body):
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate(body)


def test_chat_messages_and_limits():
    r = ChatCompletionRequest.model_validate({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "u"},
        {"role": "assistant", "content": None}], "max_tokens": 5, "max_completion_tokens": 7,
        "response_format": {"type": "text"}, "tool_choice": "none"})
    assert [m.for_template() for m in r.messages] == [{"role": "user", "content": "a\nb", "name": "u"},
                                                      {"role": "assistant", "content": ""}]
    assert r.limit == 7
    for bad in ({"response_format": {"type": "json_object"}}, {"logprobs": True}, {"tools": [{}]}):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "a"}], **bad})
