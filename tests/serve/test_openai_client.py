"""The official `openai` client against a live `skipdecode serve` on the tiny export."""

from __future__ import annotations

import json

import pytest

openai = pytest.importorskip("openai")

from servers import KEY  # noqa: E402

from skipdecode.cli.main import main  # noqa: E402
from skipdecode.schedule import Schedule  # noqa: E402

PROMPT = "w5 w9 w14 w3"


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def skipdecode_run(export, prompt: str, max_new: int, speedup, tmp_path) -> dict:
    out = tmp_path / "run.jsonl"
    args = ["run", "--export", str(export), "--prompt", prompt, "--max-new-tokens", str(max_new), "--output", str(out)]
    assert main(args + (["--speedup", str(speedup)] if speedup else [])) == 0
    return json.loads(out.read_text())


def test_models_lists_the_export(client):
    (m,) = client.models.list().data
    assert m.id == "tiny-llama" and m.owned_by == "skipdecode"
    assert m.model_extra["max_model_len"] == 96 and m.model_extra["num_layers"] == 6


@pytest.mark.parametrize("speedup", [None, 2, 3])
def test_greedy_completion_equals_skipdecode_run(client, model, serve_export, tmp_path, speedup):
    ref = skipdecode_run(serve_export, PROMPT, 12, speedup, tmp_path)
    extra = {"skipdecode": {"speedup": speedup}} if speedup else None
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0, extra_body=extra)
    (choice,) = r.choices
    assert choice.text == ref["output"]
    assert r.usage.completion_tokens == ref["tokens"]
    assert r.usage.prompt_tokens == 4 and r.usage.total_tokens == 4 + ref["tokens"]
    assert r.usage.model_extra["mean_layers"] == pytest.approx(ref["mean_layers"], abs=1e-3)
    assert choice.finish_reason == ("length" if ref["finish_reason"] == "length" else "stop")
    if speedup:
        assert r.usage.model_extra["mean_layers"] < 6 and r.usage.model_extra["layer_speedup"] > 1


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_streamed_text_equals_non_streamed(client, model, chat):
    kw = dict(model=model, max_tokens=20, temperature=0, extra_body={"skipdecode": {"speedup": 2}})
    if chat:
        messages = [{"role": "system", "content": "w7"}, {"role": "user", "content": "w5 w9"}]
        whole = client.chat.completions.create(messages=messages, **kw)
        chunks = list(client.chat.completions.create(messages=messages, stream=True,
                                                     stream_options={"include_usage": True}, **kw))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        expected = whole.choices[0].message.content
        assert chunks[0].choices[0].delta.role == "assistant"
    else:
        whole = client.completions.create(prompt=PROMPT, **kw)
        chunks = list(client.completions.create(prompt=PROMPT, stream=True, stream_options={"include_usage": True},
                                                **kw))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        expected = whole.choices[0].text
    assert text == expected and text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.completion_tokens == whole.usage.completion_tokens
    assert usage.model_extra["mean_layers"] == whole.usage.model_extra["mean_layers"]


def test_chat_renders_the_exports_template(client, model):
    """system w7, user 'w5 w9' -> 'w10 w7 w11 w5 w9 w12' (tests/serve/servers.py's template)."""
    chat = client.chat.completions.create(model=model, max_tokens=10, temperature=0, messages=[
        {"role": "system", "content": "w7"}, {"role": "user", "content": [{"type": "text", "text": "w5 w9"}]}])
    text = client.completions.create(model=model, prompt="w10 w7 w11 w5 w9 w12", max_tokens=10, temperature=0)
    assert chat.choices[0].message.content == text.choices[0].text
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.prompt_tokens == 6


def test_an_explicit_schedule_equals_its_speedup(client, model):
    schedule = Schedule.for_speedup(6, 2, 32, 1).to_dict()
    a = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0,
                                  extra_body={"skipdecode": {"schedule": schedule}})
    b = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0,
                                  extra_body={"skipdecode": {"speedup": 2}})
    assert a.choices[0].text == b.choices[0].text
    assert a.usage.model_extra == b.usage.model_extra


def test_seeded_sampling_repeats_and_stop_strings_cut(client, model):
    kw = dict(model=model, prompt=PROMPT, max_tokens=16, temperature=0.9, top_p=0.95, seed=11)
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text
    greedy = client.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0).choices[0].text
    words = greedy.split()
    assert len(words) >= 3, greedy
    stop = words[2]
    cut = client.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == greedy[:greedy.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_several_prompts_and_n_choices(client, model):
    r = client.completions.create(model=model, prompt=["w5 w9", "w31"], n=2, max_tokens=8, temperature=0)
    solo = [client.completions.create(model=model, prompt=p, max_tokens=8, temperature=0) for p in ("w5 w9", "w31")]
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [solo[0].choices[0].text] * 2 + [solo[1].choices[0].text] * 2
    assert r.usage.prompt_tokens == 3
    assert r.usage.completion_tokens == 2 * sum(s.usage.completion_tokens for s in solo)
