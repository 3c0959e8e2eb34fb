"""Chat messages -> prompt text through the export's own chat template (jinja2, no transformers).

The template is the one the model was tuned with: ``chat_template.jinja`` beside the tokenizer
(newer transformers), else ``chat_template`` in ``tokenizer_config.json``; ``skipdecode export``
copies both. It is rendered as transformers' ``apply_chat_template`` does: a sandboxed
environment, ``trim_blocks``/``lstrip_blocks``, the loop-controls extension and
``raise_exception``. An export without a template has no chat endpoint (400): there is no
fallback format, because a made-up one would silently prompt a chat model wrongly.

>>> t = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}\\n{% endfor %}"
...                  "{% if add_generation_prompt %}<assistant>{% endif %}")
>>> t.render([{"role": "user", "content": "hi"}])
'<user>hi\\n<assistant>'
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from skipdecode.errors import SkipDecodeError


class TemplateError(SkipDecodeError):
    """The template refused the messages (its ``raise_exception``) or failed to render."""


def _special(value) -> str:
    if isinstance(value, dict):  # {"content": "<|im_end|>", ...}
        value = value.get("content")
    return value if isinstance(value, str) else ""


def read_chat_template(folder: str | Path) -> tuple[str | None, dict]:
    """(template source or None, special tokens the template may use) from a tokenizer folder."""
    folder = Path(folder)
    cfg_file = folder / "tokenizer_config.json"
    try:
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    except json.JSONDecodeError as e:
        raise SkipDecodeError(f"{cfg_file}:{e.lineno}: invalid JSON ({e.msg})") from None
    special = {k: _special(cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(), special
    source = cfg.get("chat_template")
    if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    return (source if isinstance(source, str) and source else None), special


class ChatTemplate:
    def __init__(self, source: str, special: dict | None = None):
        from jinja2 import TemplateError as JinjaError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise TemplateError(str(message))

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._jinja_error = JinjaError
        try:
            self.template = env.from_string(source)
        except JinjaError as e:
            raise SkipDecodeError(f"the export's chat template does not parse: {e}") from None
        self.special = dict(special or {})

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        **self.special)
        except TemplateError:
            raise
        except (self._jinja_error, TypeError, ValueError, KeyError) as e:
            raise TemplateError(f"the chat template cannot render these messages: {e}") from None

    @classmethod
    def from_dir(cls, folder: str | Path) -> "ChatTemplate | None":
        source, special = read_chat_template(folder)
        return cls(source, special) if source else None
