"""Task data (skipdecode/data.py): E2E/JSONL reading with file:line errors, held-out splits and
the distinct prompts with their references that evaluation scores. No torch."""

import csv
import json

import pytest

from skipdecode.data import (Example, format_prompt, group_examples, load_examples, load_heldout, read_e2e,
                             split_heldout)
from skipdecode.errors import SkipDecodeError


def write_e2e(path, rows, header=("mr", "ref")):
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_e2e_reads_prompt_template_and_groups(tmp_path):
    f = write_e2e(tmp_path / "clean.csv", [("name[A], food[Thai]", "A serves Thai food.", "0", "name[A]")],
                  header=("mr", "ref", "fixed", "orig_mr"))
    [e] = read_e2e(f)
    assert e.prompt == format_prompt("name[A], food[Thai]") == "name[A], food[Thai]\n"
    assert e.target == "A serves Thai food."
    assert e.group == "name[A]"  # clean-devel rows group with the devset MR they came from
    assert e.source == f"{f}:2"


def test_one_file_or_several_and_jsonl(tmp_path):
    e2e = write_e2e(tmp_path / "t.csv", [("w3", "w4"), ("w5", "w6 w7")])
    j = write_jsonl(tmp_path / "d.jsonl", [{"q": "w3 w4", "a": "w5"}, {"q": "w6", "a": ["w7 w8", "w9"]}])
    assert load_examples(e2e) == load_examples([e2e]) == load_examples(str(e2e))
    ex = load_examples([e2e, j], prompt_field="q", target_field="a")
    assert len(ex) == 5
    assert ex[-2:] == [Example("w6", "w7 w8", "w6", str(j)), Example("w6", "w9", "w6", str(j))]  # one per target


@pytest.mark.parametrize("rows, header, message", [
    ([("name[A]", "")], ("mr", "ref"), ":2: missing or empty field 'ref'"),
    ([("name[A]", "ok"), ("  ", "text")], ("mr", "ref"), ":3: missing or empty field 'mr'"),
    ([("name[A]",)], ("mr", "ref"), ":2: missing or empty field 'ref'"),
    ([("name[A]", "ok")], ("mr", "text"), ":1: missing column 'ref'"),
])
def test_e2e_errors_name_file_and_line(tmp_path, rows, header, message):
    f = write_e2e(tmp_path / "bad.csv", rows, header=header)
    with pytest.raises(SkipDecodeError) as e:
        read_e2e(f)
    assert str(e.value).startswith(f"{f}{message}")


def test_e2e_line_numbers_count_multiline_fields(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text('mr,ref\n"name[A]","one\ntwo"\n"name[B]",\n')
    with pytest.raises(SkipDecodeError, match=r"m\.csv:4: missing or empty field 'ref'"):
        read_e2e(f)


@pytest.mark.parametrize("row", [{"prompt": "a"}, {"prompt": "a", "target": ""}, {"prompt": "a", "target": []},
                                 {"prompt": "a", "target": ["b", " "]}, {"prompt": "a", "target": 3}])
def test_jsonl_errors_name_file_and_line(tmp_path, row):
    f = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "target": "b"}, row])
    with pytest.raises(SkipDecodeError, match=r"d\.jsonl:2: missing or empty field 'target' \(a string or a list"):
        load_examples([f])


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(SkipDecodeError, match="cannot tell the format"):
        load_examples(tmp_path / "d.txt")
    with pytest.raises(SkipDecodeError, match="unknown format 'xml'"):
        load_examples(tmp_path / "d.csv", "xml")


def test_split_holds_out_whole_groups_reproducibly():
    ex = [Example(f"p{g}", f"t{g}{i}", f"g{g}", "x") for g in range(40) for i in range(3)]
    train, held = split_heldout(ex, 0.1, seed=0)
    assert len({e.group for e in held}) == 4 and len(held) == 12
    assert not {e.group for e in held} & {e.group for e in train}
    assert split_heldout(list(reversed(ex)), 0.1, seed=0)[1] == list(reversed(held))  # order-free
    assert split_heldout(ex, 0.1, seed=1)[1] != held
    assert split_heldout(ex, 0.0)[1] == []


def test_group_examples_merges_rows_of_a_prompt_in_first_seen_order():
    rows = [("B", "b1"), ("A", "a1"), ("B", " b2 "), ("C", "c1"), ("A", "a2"), ("B", "b3")]
    grouped = group_examples([Example(p, t, p, "x") for p, t in rows])
    assert [(e.prompt, e.references) for e in grouped] == [("B", ["b1", "b2", "b3"]), ("A", ["a1", "a2"]),
                                                           ("C", ["c1"])]
    assert [e.prompt for e in group_examples([Example(p, t, p, "x") for p, t in rows], limit=2)] == ["B", "A"]
    with pytest.raises(SkipDecodeError, match="--limit must be >= 1"):
        group_examples([], limit=0)


def test_group_examples_reads_e2e_references_and_inputs(tmp_path):
    f = write_e2e(tmp_path / "t.csv", [("name[A]", "one"), ("name[B]", "two"), ("name[A]", "three")])
    grouped = group_examples(load_examples(f))
    assert [(e.prompt, e.input, e.references) for e in grouped] == [
        ("name[A]\n", "name[A]", ["one", "three"]), ("name[B]\n", "name[B]", ["two"])]


def test_heldout_is_the_split_of_a_training_run(tmp_path):
    f = write_e2e(tmp_path / "t.csv", [("name[A]", "one"), ("name[B]", "two"), ("name[A]", "three")])
    (tmp_path / "split.json").write_text(json.dumps({"data": [str(f)], "heldout_groups": ["name[A]"]}))
    [e] = load_heldout(tmp_path)
    assert (e.prompt, e.references) == ("name[A]\n", ["one", "three"])
