"""Training data: E2E/JSONL reading with file:line errors, held-out split, batching."""

import pytest

from train_helpers import write_e2e, write_jsonl
from skipdecode.errors import SkipDecodeError
from skipdecode.tokenizer import Tokenizer
from skipdecode.training import format_prompt
from skipdecode.training.data import (IGNORE_INDEX, BatchStream, Example, collate, epoch_batches, load_examples,
                                      read_e2e, split_heldout, tokenize)


def test_e2e_reads_prompt_template_and_groups(tmp_path):
    f = write_e2e(tmp_path / "clean.csv", [("name[A], food[Thai]", "A serves Thai food.", "0", "name[A]")],
                  header=("mr", "ref", "fixed", "orig_mr"))
    [e] = read_e2e(f)
    assert e.prompt == format_prompt("name[A], food[Thai]") == "name[A], food[Thai]\n"
    assert e.target == "A serves Thai food."
    assert e.group == "name[A]"  # clean-devel rows group with the devset MR they came from
    assert e.source == f"{f}:2"


def test_several_files_and_jsonl(tmp_path, e2e_file):
    j = write_jsonl(tmp_path / "d.jsonl", [{"q": "w3 w4", "a": "w5"}, {"q": "w6", "a": "w7 w8"}])
    ex = load_examples([e2e_file, j], prompt_field="q", target_field="a")
    assert len(ex) == 18
    assert ex[-1] == Example("w6", "w7 w8", "w6", str(j))


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
    assert str(e.value) == f"{f}{message}" or str(e.value).startswith(f"{f}{message}")


def test_e2e_line_numbers_count_multiline_fields(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text('mr,ref\n"name[A]","one\ntwo"\n"name[B]",\n')
    with pytest.raises(SkipDecodeError, match=r"m\.csv:4: missing or empty field 'ref'"):
        read_e2e(f)


def test_jsonl_errors(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "target": "b"}, {"prompt": "a"}])
    with pytest.raises(SkipDecodeError, match=r"d\.jsonl:2: missing or empty field 'target'"):
        load_examples([f])


def test_split_holds_out_whole_groups_reproducibly():
    ex = [Example(f"p{g}", f"t{g}{i}", f"g{g}", "x") for g in range(40) for i in range(3)]
    train, held = split_heldout(ex, 0.1, seed=0)
    assert len({e.group for e in held}) == 4 and len(held) == 12
    assert not {e.group for e in held} & {e.group for e in train}
    assert split_heldout(list(reversed(ex)), 0.1, seed=0)[1] == list(reversed(held))  # order-free
    assert split_heldout(ex, 0.1, seed=1)[1] != held
    assert split_heldout(ex, 0.0)[1] == []


def test_tokenize_appends_eos_and_collate_aligns_targets(train_llama):
    tok = Tokenizer.from_dir(train_llama)
    ex = [Example("w3 w4 w5\n", "w6 w7", "a", "x"), Example("w8\n", "w9 w10 w11", "b", "x")]
    pairs, dropped = tokenize(ex, tok, 100)
    assert dropped == 0 and pairs[0] == ([3, 4, 5], [6, 7, 2])
    b = collate(pairs, tok.pad_id)
    assert b.prompt_len == 3
    assert b.input_ids.tolist() == [[3, 4, 5, 6, 7, 2, 0], [0, 0, 8, 9, 10, 11, 2]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1, 1]]
    assert (b.labels[:, :3] == IGNORE_INDEX).all()
    assert b.labels[:, 3:].tolist() == [[6, 7, 2, IGNORE_INDEX], [9, 10, 11, 2]]
    assert (b.num_tokens, b.num_targets) == (11, 7)
    assert tokenize(ex, tok, 5) == ([([8], [9, 10, 11, 2])], 1)


def test_batches_are_length_bucketed_and_deterministic():
    lengths = [(i * 37) % 101 for i in range(400)]
    a = epoch_batches(lengths, 8, seed=0, epoch=0, pool=10)
    assert a == epoch_batches(lengths, 8, seed=0, epoch=0, pool=10)
    assert a != epoch_batches(lengths, 8, seed=0, epoch=1, pool=10)
    assert sorted(i for b in a for i in b) == list(range(400))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 15  # random batches would span ~80


def test_batch_stream_resumes_mid_epoch():
    s = BatchStream([1, 2, 3, 4, 5, 6, 7], batch_size=2, seed=3)
    first = [s.next() for _ in range(6)]  # crosses into epoch 1
    t = BatchStream([1, 2, 3, 4, 5, 6, 7], batch_size=2, seed=3)
    [t.next() for _ in range(3)]
    u = BatchStream([1, 2, 3, 4, 5, 6, 7], batch_size=2, seed=3)
    u.load_state_dict(t.state_dict())
    assert [u.next() for _ in range(3)] == first[3:]
    assert s.epoch == 1
