"""Training batches: tokenizing, collating and a resumable batch order (reading: tests/test_data.py)."""

from skipdecode.data import Example
from skipdecode.tokenizer import Tokenizer
from skipdecode.training.batches import IGNORE_INDEX, BatchStream, collate, epoch_batches, tokenize


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
