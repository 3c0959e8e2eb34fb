import json
import os
import stat

import pytest

from skipdecode.errors import SkipDecodeError
from skipdecode.io import atomic_dir, atomic_write_text, read_json, read_jsonl


def test_atomic_files_and_folders_get_the_usual_modes(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_atomic_dir_leaves_the_old_folder_on_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as d:
        (d / "v").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as d:
            (d / "v").write_text("2")
            raise RuntimeError("boom")
    assert (out / "v").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_read_jsonl_names_file_and_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"prompt": "a"}) + "\n[1]\n")
    with pytest.raises(SkipDecodeError, match=r"x.jsonl:2: expected a JSON object"):
        read_jsonl(f)


def test_read_json_takes_a_file_or_its_folder_and_names_the_bad_line(tmp_path):
    (tmp_path / "r.json").write_text('{"a": 1}')
    assert read_json(tmp_path, "r.json", "{path}: none") == (tmp_path / "r.json", {"a": 1})
    assert read_json(tmp_path / "r.json", "other.json", "{path}: none")[1] == {"a": 1}
    with pytest.raises(SkipDecodeError, match=r"x: no x.json here"):
        read_json(tmp_path / "x", "x.json", "{path}: no x.json here")
    (tmp_path / "r.json").write_text('{\n"a": }')
    with pytest.raises(SkipDecodeError, match=r"r.json:2: invalid JSON"):
        read_json(tmp_path, "r.json", "{path}: none")
