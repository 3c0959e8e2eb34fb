"""`--mixed-precision auto` (training/precision.py): bf16 only where native and measured faster;
the decision logic with the measurement injected, this host's own decision, and the trainer
applying it (bf16 autocast over fp32 master weights)."""

import json

import pytest
import torch

from skipdecode.data import load_examples
from skipdecode.training import precision
from skipdecode.training.config import TrainConfig
from skipdecode.training.precision import NATIVE_BF16_FLAGS, THRESHOLD, PrecisionChoice, choose, cpu_flags, resolve
from skipdecode.training.schedules import ScheduleSampler
from skipdecode.schedule import Schedule
from skipdecode.training.trainer import Trainer


class Measure:
    def __init__(self, ratio):
        self.ratio, self.calls = ratio, 0

    def __call__(self):
        self.calls += 1
        return self.ratio


@pytest.mark.parametrize("flags, ratio, setting, measured", [
    ({"avx2", "avx512f", "avx512_vnni"}, 3.0, "no", 0),   # no native bf16: never timed, whatever it would say
    ({"amx_bf16", "amx_tile", "avx512_bf16"}, 2.26, "bf16", 1),  # the AMX host
    ({"avx512_bf16"}, THRESHOLD, "bf16", 1),
    ({"avx512_bf16"}, THRESHOLD - 0.01, "no", 1),          # native, but not measurably faster
    ({"asimd", "bf16"}, 1.8, "bf16", 1),                   # ARM's bf16 feature
])
def test_decision_logic_with_the_measurement_injected(flags, ratio, setting, measured):
    m = Measure(ratio)
    c = choose(flags, m)
    assert c.setting == setting and m.calls == measured
    assert c.bf16_speedup == (round(ratio, 3) if measured else None)
    assert (f"{ratio:.2f}x" in c.reason) == bool(measured)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 avx512_bf16\nbugs\t\t: spectre\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 sve\n")
    assert cpu_flags(x86) == {"fpu", "avx2", "amx_bf16", "avx512_bf16"}
    assert "bf16" in cpu_flags(arm) and cpu_flags(tmp_path / "none") == frozenset()


def test_other_settings_pass_through():
    assert resolve("no", 64, 128).setting == "no" and resolve("bf16", 64, 128).setting == "bf16"


def test_this_host_decides_by_its_flags_and_a_measurement():
    """Here (no AMX, no AVX512-BF16) auto picks fp32 without timing; on a native-bf16 host it picks
    whatever the micro-benchmark measures, and the decision is cached for the process."""
    c = resolve("auto", 576, 1536, cuda=False)
    assert resolve("auto", 576, 1536, cuda=False) is c
    if not set(NATIVE_BF16_FLAGS) & cpu_flags():
        assert c == PrecisionChoice("no", c.reason) and "no native bf16" in c.reason
    else:
        assert c.bf16_speedup is not None and c.setting == ("bf16" if c.bf16_speedup >= THRESHOLD else "no")


def test_the_micro_benchmark_is_short_and_measures_a_ratio():
    import time

    t0 = time.perf_counter()
    ratio = precision.bf16_speedup(64, 128, tokens=32, repeats=1)
    assert ratio > 0 and time.perf_counter() - t0 < 5


@pytest.fixture
def fresh_accelerate():
    """accelerate's state is one per process and refuses a second mixed precision: reset around."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("chosen", [PrecisionChoice("no", "mocked"), PrecisionChoice("bf16", "mocked", 2.0)])
def test_the_trainer_applies_and_logs_the_choice(train_llama, e2e_file, tmp_path, monkeypatch, fresh_accelerate,
                                                 chosen):
    monkeypatch.setattr("skipdecode.training.trainer.resolve", lambda setting, hidden, ffn: chosen)
    examples = load_examples([e2e_file])
    cfg = TrainConfig(out=tmp_path / "out", max_steps=2, batch_size=4, progress=False, log_every=1)
    sampler = lambda L, t: ScheduleSampler(fixed=Schedule.for_speedup(L, 2, 8))  # noqa: E731
    trainer = Trainer(cfg, str(train_llama), examples, [], sampler).setup()
    seen = []
    hook = trainer.unwrapped.decoder_layers[2].mlp.down_proj.register_forward_hook(
        lambda mod, args, out: seen.append(out.dtype))
    trainer.run()
    hook.remove()
    bf16 = chosen.setting == "bf16"
    assert trainer.accelerator.mixed_precision == chosen.setting
    assert set(seen) == {torch.bfloat16 if bf16 else torch.float32}
    assert all(p.dtype == torch.float32 for p in trainer.unwrapped.parameters())  # fp32 master weights
    start = json.loads((tmp_path / "out" / "log.jsonl").read_text().splitlines()[0])
    assert start["precision"] == {"setting": chosen.setting, "reason": "mocked", "bf16_speedup": chosen.bf16_speedup}
