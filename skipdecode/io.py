"""File helpers: JSON and JSONL with file:line errors, and atomic writes (nothing half-written)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from skipdecode.errors import SkipDecodeError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_jsonl(path: str | Path, required: Iterable[str] = (), lists: Iterable[str] = ()) -> list[dict]:
    """The objects of a JSONL file; each ``required`` field must be a non-empty string (for a field
    in ``lists``: one, or a non-empty list of them), else the error names file and line."""
    path, lists = Path(path), set(lists)
    if not path.is_file():
        raise SkipDecodeError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SkipDecodeError(f"{path}:{n}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise SkipDecodeError(f"{path}:{n}: expected a JSON object")
            for key in required:
                value = row.get(key)
                values = value if key in lists and isinstance(value, list) else [value]
                if not values or not all(isinstance(v, str) and v.strip() for v in values):
                    kind = " (a string or a list of strings)" if key in lists else ""
                    raise SkipDecodeError(f"{path}:{n}: missing or empty field {key!r}{kind}")
            rows.append(row)
    return rows


def read_json(path: str | Path, name: str, missing: str) -> tuple[Path, object]:
    """(file, parsed JSON) of ``path``, or of ``path/name`` when ``path`` is a folder; a parse error
    names file and line. ``missing``: the error when there is no such file, formatted with ``path``
    and ``file``."""
    path = Path(path)
    file = path / name if path.is_dir() else path
    if not file.is_file():
        raise SkipDecodeError(missing.format(path=path, file=file))
    try:
        return file, json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SkipDecodeError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    On an exception the temporary folder is removed and ``out`` (new or old) is untouched, so a
    reader never sees a half-written export, checkpoint or cache entry.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; give the folder the usual mode
        if out.exists():  # swap in, then drop the old folder
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cache_root() -> Path:
    """Where converted models and downloaded data are cached ($SKIPDECODE_CACHE moves it)."""
    return Path(os.environ.get("SKIPDECODE_CACHE", Path.home() / ".cache" / "skipdecode"))
