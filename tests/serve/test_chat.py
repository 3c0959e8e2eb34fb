"""Chat templates read from an export's tokenizer files and rendered without transformers."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("jinja2")

from skipdecode.serve.chat import ChatTemplate, TemplateError, read_chat_template  # noqa: E402

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
           "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_smollm2s_template_renders_as_transformers_does():
    text = ChatTemplate(SMOLLM2).render([{"role": "user", "content": "Hi"}])
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_the_jinja_file_wins_over_tokenizer_config(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "config", "eos_token": "</s>"}))
    assert read_chat_template(tmp_path)[0] == "config"
    (tmp_path / "chat_template.jinja").write_text("file {{ eos_token }}")
    source, special = read_chat_template(tmp_path)
    assert source == "file {{ eos_token }}" and special["eos_token"] == "</s>"
    assert ChatTemplate.from_dir(tmp_path).render([]) == "file </s>"


def test_named_templates_and_none(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "tools"}, {"name": "default", "template": "plain"}]}))
    assert read_chat_template(tmp_path)[0] == "plain"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<e>"}}))
    assert ChatTemplate.from_dir(tmp_path) is None


def test_a_template_that_refuses_the_messages_is_a_template_error():
    t = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must start with user') }}"
                     "{% endif %}ok")
    assert t.render([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(TemplateError, match="roles must start with user"):
        t.render([{"role": "assistant", "content": "x"}])
    with pytest.raises(TemplateError, match="cannot render"):
        ChatTemplate("{{ messages[0].content + 1 }}").render([{"role": "user", "content": "x"}])


def test_exports_carry_the_tokenizer_config_and_template_files(tiny_export):
    from skipdecode.tokenizer import TOKENIZER_FILES

    folder, _, _ = tiny_export("llama-gqa")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "tokenizer_config.json" in manifest["tokenizer_files"] and (folder / "tokenizer_config.json").is_file()
    assert {"tokenizer_config.json", "chat_template.jinja"} <= set(TOKENIZER_FILES)  # both copied when present
