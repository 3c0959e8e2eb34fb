"""The Runtime API over any backend: text in, text out; streaming equals the batch result."""

import pytest

from skipdecode.errors import SkipDecodeError
from skipdecode.models.backend import TorchBackend
from skipdecode.runtime.api import Runtime, open_backend
from skipdecode.schedule import Schedule

PROMPTS = ["w5 w9 w14 w3", "w31", "w8 w8 w40"]


@pytest.fixture
def runtime(tiny_models):
    loaded = tiny_models["llama"][1]
    return Runtime(TorchBackend(loaded.model), loaded.tokenizer)


def test_stream_concatenates_to_the_generated_text(runtime):
    rows = runtime.generate(PROMPTS, speedup=2, window=4, max_new_tokens=8, ignore_eos=True)
    pieces = {i: "" for i in range(len(PROMPTS))}
    for event in runtime.stream(PROMPTS, speedup=2, window=4, max_new_tokens=8, ignore_eos=True):
        pieces[event.row] += event.text
    assert [pieces[i] for i in range(len(PROMPTS))] == [r.text for r in rows]
    assert all(r.tokens == 8 and r.prompt == p for r, p in zip(rows, PROMPTS))


def test_schedule_choice(runtime):
    assert runtime.schedule().is_full  # no trained schedule: full depth
    assert runtime.schedule(speedup=3, window=4).speedup == pytest.approx(3, rel=0.2)
    s = Schedule.constant(6, 2)
    assert runtime.schedule(s) is s
    with pytest.raises(SkipDecodeError, match="not both"):
        runtime.schedule(s, speedup=2)


@pytest.mark.parametrize("own, shape", [(None, "decay"), (Schedule.full(6), "decay"), (Schedule(6, 5, 2, window=8), "decay"),
                                        (Schedule.constant(6, 3), "static")])
def test_a_speedup_is_solved_over_the_own_schedules_window(tiny_models, own, shape):
    """``speedup`` alone (`run --input` lines, `serve` requests and `--speedup`) solves over the
    export's own window, or over DEFAULT_WINDOW when its own schedule is full depth (a 1x or
    any-budget model records window 1): such a model's rows used to be solved to static dropping."""
    from skipdecode.schedule import DEFAULT_WINDOW

    loaded = tiny_models["llama"][1]
    rt = Runtime(TorchBackend(loaded.model), loaded.tokenizer, own)
    window = own.window if own is not None and not own.is_full else DEFAULT_WINDOW
    s = rt.schedule(speedup=2)
    assert s == Schedule.for_speedup(6, 2, window, **(own or Schedule.full(6)).family())
    assert (s.max_layers == s.min_layers) == (shape == "static")
    assert rt.schedule(speedup=2, window=3).window == 3


def test_a_range_export_solves_speedups_in_its_trained_shape(tiny_export, tmp_path):
    """Runtime.load reads the export's skipdecode.json facts: a speedup-range model (own schedule
    full depth) is asked for speedups in the window and decay it was trained over."""
    import shutil

    from skipdecode.schedule import write_schedule_file

    folder, _, _ = tiny_export("llama-gqa")
    export = tmp_path / "range"
    shutil.copytree(folder, export)
    plain = Runtime.load(export)
    L = plain.num_layers
    assert plain.schedule(speedup=2) == Schedule.for_speedup(L, 2, 32, **plain.schedule().family())
    write_schedule_file(export, plain.own_schedule, {"speedup_range": [1, 3], "window": 8, "decay": "power"})
    rt = Runtime.load(export)
    assert rt.facts["window"] == 8
    s = rt.schedule(speedup=2)
    assert s == Schedule.for_speedup(L, 2, 8, decay="power", **rt.schedule().family()) and s.decay == "power"
    assert rt.schedule(speedup=2, window=4).window == 4


def test_stop_strings_cut_the_text(runtime):
    free = runtime.generate(PROMPTS[:1], max_new_tokens=8, ignore_eos=True)[0]
    word = free.text.split()[2]
    row = runtime.generate(PROMPTS[:1], max_new_tokens=8, ignore_eos=True, stop=[word])[0]
    assert row.finish_reason == "stop" and word not in row.text and free.text.startswith(row.text)


def test_unknown_backend_is_a_clean_error(tmp_path):
    with pytest.raises(SkipDecodeError, match="unknown backend 'tvm'"):
        open_backend(tmp_path, backend="tvm")


def test_a_both_targets_export_opens_the_right_folder(tiny_export, tmp_path):
    import shutil

    folder, _, _ = tiny_export("llama-gqa")
    both = tmp_path / "both"
    shutil.copytree(folder, both / "onnxruntime")
    rt = Runtime.load(both)  # as `skipdecode run --export DIR` and `bench --export DIR` do
    assert rt.backend.dir == both / "onnxruntime"
    assert rt.generate(["w5 w6"], max_new_tokens=3, ignore_eos=True)[0].tokens == 3
