"""A thin tokenizer over the `tokenizers` library (tokenizer.json), shared by the PyTorch
reference and the edge runtime, so both turn text into the same ids without transformers."""

from __future__ import annotations

import json
from pathlib import Path

from skipdecode.errors import SkipDecodeError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja")


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SkipDecodeError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


class Tokenizer:
    def __init__(self, backend, eos_ids: list[int], pad_id: int):
        self.backend = backend
        self.eos_ids = eos_ids
        self.pad_id = pad_id

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        file = path / "tokenizer.json"
        if not file.exists():
            raise SkipDecodeError(f"{path}: no tokenizer.json (the tokenizer must sit beside the model)")
        try:
            backend = HFTokenizer.from_file(str(file))
        except Exception as e:  # the library raises a bare Exception on corrupt files
            raise SkipDecodeError(f"{file}: cannot read tokenizer ({str(e).splitlines()[0]})") from None
        gen, cfg, tok_cfg = (_read_json(path / n) for n in ("generation_config.json", "config.json", "tokenizer_config.json"))
        eos = _ids(gen.get("eos_token_id", cfg.get("eos_token_id")))
        if not eos and isinstance(tok_cfg.get("eos_token"), str):
            tid = backend.token_to_id(tok_cfg["eos_token"])
            eos = [] if tid is None else [tid]
        pad = gen.get("pad_token_id", cfg.get("pad_token_id"))
        pad = _ids(pad)[0] if pad is not None else (eos[0] if eos else 0)
        return cls(backend, eos, pad)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``add_special_tokens=False`` for text that already holds them (a rendered chat template)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()
