"""The fine-tuning loop on tiny models: loss alignment, memorisation under a 3x schedule decoded
by the runtime, resume equivalence (with Ctrl-C), checkpoints that transformers loads."""

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import e2e_rows, write_e2e
from skipdecode.data import load_examples
from skipdecode.errors import SkipDecodeError
from skipdecode.models import load_model
from skipdecode.models.base import positions_from_mask
from skipdecode.schedule import Schedule
from skipdecode.training.config import TrainConfig
from skipdecode.training.batches import collate, tokenize
from skipdecode.training.evaluate import batch_loss, greedy_samples
from skipdecode.training.schedules import ScheduleSampler
from skipdecode.training.trainer import Trainer


def fixed(speedup, window=8):
    return lambda L, trained: ScheduleSampler(fixed=Schedule.full(L) if speedup == 1
                                              else Schedule.for_speedup(L, speedup, window))


def config(out, **kw):
    kw = {"max_steps": 6, "batch_size": 4, "lr": 3e-3, "progress": False, "log_every": 1, **kw}
    return TrainConfig(out=out, **kw)


def test_loss_on_targets_only_matches_transformers(train_llama, e2e_file):
    """logits_start = prompt_len - 1 gives the same loss as the full head, and as transformers'
    causal-LM loss on the same labels (so the shift is aligned)."""
    import transformers

    loaded = load_model(str(train_llama))
    pairs, _ = tokenize(load_examples([e2e_file])[:5], loaded.tokenizer, 100)
    b = collate(pairs, loaded.tokenizer.pad_id)
    loss, logits = batch_loss(loaded.model, b, Schedule.full(6))
    assert logits.shape[1] == b.input_ids.shape[1] - b.prompt_len + 1
    _, full = loaded.model(b.input_ids, b.attention_mask, labels=b.labels)
    hf = transformers.AutoModelForCausalLM.from_pretrained(train_llama, dtype=torch.float32).eval()
    ref = hf(input_ids=b.input_ids, attention_mask=b.attention_mask.long(),
             position_ids=positions_from_mask(b.attention_mask), labels=b.labels).loss
    torch.testing.assert_close(loss, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)
    skip, _ = batch_loss(loaded.model, b, Schedule.for_speedup(6, 3, 8))
    assert abs(float(skip.detach()) - float(loss.detach())) > 1e-3  # the schedule changes what the targets see


def test_memorises_16_examples_under_3x(train_llama, e2e_file, tmp_path):
    examples = load_examples([e2e_file])
    cfg = config(tmp_path / "out", max_steps=110, batch_size=16, warmup_steps=10, log_every=10)
    trainer = Trainer(cfg, str(train_llama), examples, examples[:4], fixed(3)).setup()
    schedule = trainer.sampler.fixed
    assert schedule.max_layers < 6 and round(schedule.speedup) == 3
    result = trainer.run()
    log = [json.loads(line) for line in (tmp_path / "out/log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert losses[0] > 2.0 and losses[-1] < 0.1 and result.train_loss < 0.1
    # greedy skip decoding through the runtime loop reproduces every target, EOS included
    loaded = load_model(str(result.checkpoint))
    assert loaded.schedule == schedule
    out = greedy_samples(loaded.model, loaded.tokenizer, examples, loaded.schedule, 12)
    assert [o["output"] for o in out] == [e.target for e in examples]
    assert all(o["finish_reason"] == "eos" for o in out)


@pytest.mark.parametrize("log_every, steps, means", [(0, 3, 1), (2, 3, 2)])
def test_final_train_loss_is_the_mean_over_processes(train_llama, e2e_file, tmp_path, log_every, steps, means):
    """The result's loss goes through the cross-process mean that the logged losses get, also for
    steps past the last train record (log_every 0: no record at all)."""
    examples = load_examples([e2e_file])
    trainer = Trainer(config(tmp_path / "out", max_steps=steps, log_every=log_every), str(train_llama), examples,
                      [], fixed(1)).setup()
    local = []

    def halved(value):  # as if a second process had seen loss 0
        local.append(value)
        return value / 2

    trainer._mean_over_processes = halved
    result = trainer.run()
    assert len(local) == means and result.train_loss == local[-1] / 2
    logged = [json.loads(line) for line in (tmp_path / "out/log.jsonl").read_text().splitlines()]
    records = [round(v / 2, 5) for v in local] if log_every else []
    assert [r["loss"] for r in logged if r["event"] == "train"] == records


def final_weights(path):
    return load_file(path / "model.safetensors")


def test_resume_after_ctrl_c_matches_one_run(train_llama, tmp_path):
    """6 steps in one run == 3 steps, Ctrl-C (checkpoint), --resume, 3 steps: same weights.
    Covers optimizer, LR schedule, data order across epochs, and per-batch schedule sampling."""
    examples = load_examples([write_e2e(tmp_path / "d.csv", e2e_rows(10))])
    sampler = lambda L, t: ScheduleSampler.for_range(L, 1.5, 4, window=8)  # noqa: E731
    kw = dict(max_steps=6, batch_size=4, grad_accum=2, warmup_steps=2, weight_decay=0.1, seed=3)
    one = Trainer(config(tmp_path / "one", **kw), str(train_llama), examples, [], sampler).run()
    assert one.step == 6 and not one.interrupted

    def ctrl_c(trainer):
        if trainer.step == 3:
            signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    first = Trainer(config(tmp_path / "two", **kw), str(train_llama), examples, [], sampler).run(hooks=[ctrl_c])
    assert first.interrupted and first.step == 3 and first.checkpoint.name == "checkpoint-000003"
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    with pytest.raises(SkipDecodeError, match="already holds checkpoints"):
        Trainer(config(tmp_path / "two", **kw), str(train_llama), examples, [], sampler).setup()
    with pytest.raises(SkipDecodeError, match="--batch-size"):
        Trainer(config(tmp_path / "two", **{**kw, "batch_size": 2}), str(train_llama), examples, [], sampler,
                resume=True).setup()
    # saving every step with one kept prunes the checkpoint the run resumed from: later
    # checkpoints must still carry the tokenizer
    second = Trainer(config(tmp_path / "two", **kw, save_every=1, keep_checkpoints=1), str(train_llama), examples,
                     [], sampler, resume=True).run()
    assert second.step == 6
    assert not (tmp_path / "two" / "checkpoint-000003").exists()
    assert (second.checkpoint / "tokenizer.json").exists() and (tmp_path / "two/checkpoint-000005/tokenizer.json").exists()
    a, b = final_weights(one.checkpoint), final_weights(second.checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    steps = [json.loads(line)["step"] for line in (tmp_path / "two/log.jsonl").read_text().splitlines()
             if json.loads(line)["event"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]  # the resumed log continues, without duplicates


def test_entry_adapters_train_save_load_and_resume(train_llama, tmp_path):
    """--entry-adapter: identity-initialised adapters at the family's entry layers train with the
    rest (matrices: weight decay), are recorded in skipdecode.json and recreated by load_model with
    the same logits; a resumed run ends with an uninterrupted run's weights, adapters included."""
    examples = load_examples([write_e2e(tmp_path / "d.csv", e2e_rows(8))])
    sampler = lambda L, t: ScheduleSampler.for_range(L, 1.5, 3, window=8, drop_order=(2, 4, 1, 5, 3))  # noqa: E731
    kw = dict(max_steps=4, batch_size=4, weight_decay=0.1, entry_adapter="4")
    trainer = Trainer(config(tmp_path / "one", **kw), str(train_llama), examples, [], sampler).setup()
    adapters = trainer.unwrapped.entry_adapters
    assert adapters.spec() == {"rank": 4, "layers": [3, 5]}  # the order's entry layers
    decayed = {id(p) for p in trainer.optimizer.param_groups[0]["params"]}
    assert all(id(p) in decayed for p in adapters.parameters())
    one = trainer.run()
    info = json.loads((one.checkpoint / "skipdecode.json").read_text())
    assert info["entry_adapter"] == {"rank": 4, "layers": [3, 5]}
    assert final_weights(one.checkpoint)["entry_adapters.3.up.weight"].abs().max() > 0  # trained off the identity
    loaded = load_model(str(one.checkpoint))
    ids = torch.randint(3, 96, (2, 10), generator=torch.Generator().manual_seed(0))
    schedule = trainer.sampler.sample(trainer.rng)
    with torch.no_grad():
        want, _ = trainer.unwrapped.eval()(ids, schedule=schedule, prompt_len=4)
        got, _ = loaded.model(ids, schedule=schedule, prompt_len=4)
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    def ctrl_c(t):
        if t.step == 2:
            signal.raise_signal(signal.SIGINT)

    first = Trainer(config(tmp_path / "two", **kw), str(train_llama), examples, [], sampler).run(hooks=[ctrl_c])
    assert first.interrupted and first.step == 2
    with pytest.raises(SkipDecodeError, match=r"--entry-adapter 0: .* has entry adapters of rank 4 \(give --entry-adapter 4\)"):
        Trainer(config(tmp_path / "two", **{**kw, "entry_adapter": "0"}), str(train_llama), examples, [], sampler,
                resume=True).setup()
    second = Trainer(config(tmp_path / "two", **kw), str(train_llama), examples, [], sampler, resume=True).run()
    a, b = final_weights(one.checkpoint), final_weights(second.checkpoint)
    assert a.keys() == b.keys() and "entry_adapters.5.down.weight" in a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_checkpoint_loads_in_transformers(train_qwen2, e2e_file, tmp_path):
    """Tied embeddings (lm_head dropped on save) and the HF layout: transformers and load_model
    give the same full-schedule logits."""
    import transformers

    examples = load_examples([e2e_file])
    result = Trainer(config(tmp_path / "out", max_steps=2), str(train_qwen2), examples, [], fixed(3)).run()
    path = result.checkpoint
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "skipdecode.json"):
        assert (path / name).exists(), name
    assert "lm_head.weight" not in load_file(path / "model.safetensors")
    info = json.loads((path / "skipdecode.json").read_text())
    assert Schedule.from_dict(info["schedule"]) == Schedule.for_speedup(6, 3, 8) and info["step"] == 2
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ours = load_model(str(path))
    ids = torch.randint(3, 96, (2, 9))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        got, _ = ours.model(ids)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    trained = load_file(path / "model.safetensors")["model.embed_tokens.weight"]
    assert not torch.equal(trained, load_file(train_qwen2 / "model.safetensors")["model.embed_tokens.weight"])


def test_distillation_kl_is_zero_against_itself_at_full_depth(train_llama, e2e_file, tmp_path):
    examples = load_examples([e2e_file])
    steps = {}
    for speedup in (1, 3):
        cfg = config(tmp_path / f"out{speedup}", max_steps=1, distill_weight=1.0)
        trainer = Trainer(cfg, str(train_llama), examples, [], fixed(speedup), distill_from=str(train_llama))
        trainer.run()
        steps[speedup] = trainer.last_stats
    assert steps[1]["kl"] < 1e-6
    assert steps[3]["kl"] > 1e-3
    assert steps[3]["loss"] == pytest.approx(steps[3]["kl"])  # weight 1: KL only


def test_self_distillation_is_distillation_from_its_own_full_depth(train_llama, e2e_file, tmp_path):
    """At the first step the model is its own frozen copy, so --self-distill must give the loss, KL
    and updated weights of --distill-from the same weights; a full-depth batch has no KL term."""
    examples = load_examples([e2e_file])
    runs = {}
    for name, kw in (("teacher", dict(distill_weight=0.5)), ("self", dict(self_distill=0.5))):
        trainer = Trainer(config(tmp_path / name, max_steps=1, **kw), str(train_llama), examples, [], fixed(3),
                          distill_from=str(train_llama) if name == "teacher" else None)
        trainer.run()
        runs[name] = trainer
    a, b = runs["teacher"].last_stats, runs["self"].last_stats
    assert a["kl"] > 1e-3 and b["kl"] == pytest.approx(a["kl"], rel=1e-5)
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) == 0.5 * a["ce"] + 0.5 * a["kl"]
    for p, q in zip(runs["teacher"].unwrapped.parameters(), runs["self"].unwrapped.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    full = Trainer(config(tmp_path / "full", max_steps=1, self_distill=0.5), str(train_llama), examples, [], fixed(1))
    full.run()
    assert "kl" not in full.last_stats
    with pytest.raises(SkipDecodeError, match="give --distill-from or --self-distill, not both"):
        Trainer(config(tmp_path / "both", self_distill=0.5), str(train_llama), examples, [], fixed(3),
                distill_from=str(train_llama)).setup()


def test_a_full_disk_is_one_line_and_keeps_earlier_checkpoints(train_llama, tmp_path, monkeypatch, capsys):
    """Saving every step, the disk "fills up" at step 2: the run stops with one line naming the
    space, checkpoint 1 is intact and no half-written step 2 is left; it warned at the start."""
    import collections
    import shutil as shutil_mod

    from skipdecode.training import checkpoint as ckpt

    examples = load_examples([write_e2e(tmp_path / "d.csv", e2e_rows(10))])
    sampler = lambda L, t: ScheduleSampler.for_range(L, 1, 2, window=8)  # noqa: E731
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_mod, "disk_usage", lambda p: usage(10**9, 10**9, 1000))  # 1 kB free: warn
    real_save = torch.save

    def save(obj, path, *a, **k):
        if "checkpoint-000002" in str(path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 803465856 vs 803465744")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    trainer = Trainer(config(tmp_path / "run", save_every=1, keep_checkpoints=1), str(train_llama), examples, [],
                      sampler)
    with pytest.raises(SkipDecodeError, match=r"checkpoint-000002: could not write the checkpoint: 0.00 GB free"):
        trainer.run()
    assert "warning: 0.0 GB free under" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if "checkpoint" in p.name) == ["checkpoint-000001"]
    assert ckpt.load_trainer_state(tmp_path / "run" / "checkpoint-000001")["step"] == 1


def test_keep_best_keeps_the_lowest_dev_loss_across_a_resume(train_llama, tmp_path, monkeypatch):
    """--keep-best: best/ holds the weights of the evaluation with the lowest dev loss (here a
    scripted one), equal to that step's numbered checkpoint; the best so far survives Ctrl-C and
    --resume, so a worse loss after the resume does not overwrite it."""
    from skipdecode.training import trainer as trainer_module

    scripted = {0: 5.0, 1: 4.0, 2: 3.0, 3: 3.5, 4: 3.2, 5: 2.9, 6: 3.3}
    current = {}
    monkeypatch.setattr(trainer_module, "dev_loss", lambda *a, **k: scripted[current["trainer"].step])
    examples = load_examples([write_e2e(tmp_path / "d.csv", e2e_rows(10))])
    kw = dict(max_steps=6, eval_every=1, eval_samples=0, save_every=1, keep_checkpoints=0, keep_best=True)

    def run(out, hooks=(), **extra):
        t = Trainer(config(out, **kw), str(train_llama), examples, examples[:4], fixed(3), **extra)
        current["trainer"] = t
        return t.run(hooks=hooks)

    def ctrl_c(t):
        if t.step == 3:
            signal.raise_signal(signal.SIGINT)

    assert run(tmp_path / "run", hooks=[ctrl_c]).interrupted
    info = json.loads((tmp_path / "run/best/skipdecode.json").read_text())
    assert (info["step"], info["dev_loss"]) == (2, 3.0)
    run(tmp_path / "run", resume=True)
    info = json.loads((tmp_path / "run/best/skipdecode.json").read_text())
    assert (info["step"], info["dev_loss"]) == (5, 2.9)  # not 4 (3.2 > 3.0), not 6 (3.3)
    best, at5 = final_weights(tmp_path / "run/best"), final_weights(tmp_path / "run/checkpoint-000005")
    assert best.keys() == at5.keys() and all(torch.equal(best[k], at5[k]) for k in best)
    assert not torch.equal(best["model.embed_tokens.weight"], final_weights(tmp_path / "run/final")["model.embed_tokens.weight"])
    events = [json.loads(line) for line in (tmp_path / "run/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in events if r["event"] == "best"] == [0, 1, 2, 5]
    assert load_model(str(tmp_path / "run/best")).schedule == Schedule.for_speedup(6, 3, 8)
    with pytest.raises(SkipDecodeError, match="--keep-best: no held-out example"):
        Trainer(config(tmp_path / "none", **kw), str(train_llama), examples, [], fixed(3)).setup()
    with pytest.raises(ValueError, match="keep_best needs eval_every"):
        config(tmp_path / "x", keep_best=True)


def test_resume_refuses_another_range_window_or_decay(train_llama, tmp_path):
    """A range whose low end is full depth records full depth as its schedule, which carries no
    window or decay: the sampler's own are saved too, and a resume with other ones is refused,
    naming them. A checkpoint saved before they were recorded still resumes."""
    from skipdecode.training.checkpoint import TRAINER_STATE

    examples = load_examples([write_e2e(tmp_path / "d.csv", e2e_rows(8))])

    def sampler(window, decay="power"):
        return lambda L, t: ScheduleSampler.for_range(L, 1, 3, window=window, decay=decay)

    def ctrl_c(t):
        if t.step == 2:
            signal.raise_signal(signal.SIGINT)

    first = Trainer(config(tmp_path / "run", max_steps=4), str(train_llama), examples, [], sampler(8)).run(hooks=[ctrl_c])
    assert first.interrupted and first.step == 2
    for other, named in ((sampler(4), "window=8"), (sampler(8, "linear"), "decay='power'")):
        with pytest.raises(SkipDecodeError, match=f"schedule flags differ .*{named}"):
            Trainer(config(tmp_path / "run", max_steps=4), str(train_llama), examples, [], other, resume=True).setup()
    state_file = first.checkpoint / TRAINER_STATE
    state = torch.load(state_file, weights_only=True)
    for key in ("window", "decay"):
        state["sampler"].pop(key)
    torch.save(state, state_file)
    assert Trainer(config(tmp_path / "run", max_steps=4), str(train_llama), examples, [], sampler(8),
                   resume=True).run().step == 4


def test_max_minutes_fits_the_steps_after_warm_up_and_a_resume_keeps_them(train_llama, tmp_path, monkeypatch):
    """--max-minutes 1.5 at a (scripted) 10 s a step: after the 4 warm-up steps (40 s) 5 more fit,
    so the run stops at step 9 with the learning rate decaying to that step; a run stopped at step 6
    and resumed keeps the 9 steps and ends with the same weights. A budget that fits everything
    never adds steps."""
    from skipdecode.training import trainer as trainer_module
    from skipdecode.training.optim import lr_factor

    examples = load_examples([write_e2e(tmp_path / "d.csv", e2e_rows(10))])
    kw = dict(max_steps=20, warmup_steps=4, max_minutes=1.5)
    clock = {"t": 0.0}
    step = Trainer.train_step

    def run(out, resume=False, pace=10.0, hooks=()):
        # set up first (the precision check times itself), then script the clock and the steps' pace
        t = Trainer(config(out, **kw), str(train_llama), examples, [], fixed(3), resume=resume).setup()

        def paced(self):
            clock["t"] += pace
            return step(self)

        monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: clock["t"])
        monkeypatch.setattr(Trainer, "train_step", paced)
        try:
            return t.run(hooks=hooks)
        finally:
            monkeypatch.undo()

    one = run(tmp_path / "one")
    assert one.step == 9 and not one.interrupted
    log = [json.loads(line) for line in (tmp_path / "one/log.jsonl").read_text().splitlines()]
    assert [r for r in log if r["event"] == "fit"] == [
        {"event": "fit", "step": 4, "pace_s": 10.0, "total_steps": 9, "planned_steps": 20, "max_minutes": 1.5}]
    lrs = [r["lr"] for r in log if r["event"] == "train"]
    assert lrs == pytest.approx([3e-3 * lr_factor(s, 4, 9) for s in range(9)])

    def ctrl_c(trainer):
        if trainer.step == 6:
            signal.raise_signal(signal.SIGINT)

    first = run(tmp_path / "two", hooks=[ctrl_c])
    assert first.interrupted and first.step == 6
    second = run(tmp_path / "two", resume=True, pace=1.0)  # 3 steps at another pace
    assert second.step == 9
    a, b = final_weights(one.checkpoint), final_weights(second.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    kw.update(max_steps=6, max_minutes=60)
    assert run(tmp_path / "roomy").step == 6  # a budget that fits everything adds no step
    with pytest.raises(ValueError, match="max_minutes must be >= 0"):
        config(tmp_path / "x", max_minutes=-1)
