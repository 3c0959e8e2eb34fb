"""KL divergence from the fp32 export: zero against itself, positive for a quantized export, the
same batched as one prompt at a time, scored up to the reference's end of sequence; the CLI pairs
exports, resumes from its JSON and warns about a foreign reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skipdecode.calibration.capture import CaptureConfig, ShardSet, calibration_prompts, capture
from skipdecode.calibration.divergence import kl_rows, paired, prompt_divergence, summary
from skipdecode.calibration.quantize import QuantConfig, quantize_export
from skipdecode.cli.main import main
from skipdecode.runtime.lockstep import lockstep
from skipdecode.runtime.onnxruntime_backend import OnnxRuntimeBackend
from skipdecode.schedule import Schedule
from skipdecode.tokenizer import Tokenizer


SCHEDULE = Schedule(6, max_layers=5, min_layers=2, window=6)


def test_kl_rows_is_the_definition():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 50)) * 3, rng.normal(size=(3, 50)) * 3  # (B, V)
    p, q = np.exp(a) / np.exp(a).sum(-1, keepdims=True), np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    np.testing.assert_allclose(kl_rows(a, b), (p * np.log(p / q)).sum(-1), rtol=1e-9)
    np.testing.assert_allclose(kl_rows(a, a + 7.0), 0.0, atol=1e-12)  # a shift of the logits is no change


@pytest.fixture(scope="module")
def quantized(tiny_export, train_csv, tmp_path_factory):
    """Static int8: its scales are constants, so a row's result does not depend on its batch (a
    dynamic scale spans every row of the call)."""
    folder, _, _ = tiny_export("llama-gqa")
    tmp = tmp_path_factory.mktemp("div")
    capture(folder, calibration_prompts(train_csv, 4), SCHEDULE, tmp / "calib", CaptureConfig(4, 0, 4, 8),
            show_progress=False)
    quantize_export(folder, tmp / "int8", QuantConfig("int8-static"), ShardSet(tmp / "calib"), log=lambda s: None)
    return folder, tmp / "int8"


def _prompts(folder, train_csv, n=6):
    tok = Tokenizer.from_dir(folder)
    return tok, [tok.encode(p) for p in calibration_prompts(train_csv, n)]


def test_zero_against_itself_positive_when_quantized_and_batched_equals_single(quantized, train_csv):
    folder, q = quantized
    tok, prompts = _prompts(folder, train_csv)
    ref = OnnxRuntimeBackend(folder, threads=1)
    same = prompt_divergence(ref, OnnxRuntimeBackend(folder, threads=1), prompts, SCHEDULE, 8, [], batch_size=3)
    assert all(r["kl"] < 1e-9 and r["top1"] == 1.0 and r["tokens"] == 8 for r in same)
    quant = OnnxRuntimeBackend(q, threads=1)
    batched = prompt_divergence(ref, quant, prompts, SCHEDULE, 8, [], batch_size=4)
    single = prompt_divergence(ref, quant, prompts, SCHEDULE, 8, [], batch_size=1)
    assert summary(batched)["mean_kl"] > 1e-6
    assert [r["tokens"] for r in batched] == [r["tokens"] for r in single]
    assert all(len(r["kl_steps"]) == 8 and r["kl"] == pytest.approx(np.mean(r["kl_steps"]), abs=1e-6)
               for r in batched)
    by_step = summary(batched)["kl_by_step"]
    assert len(by_step) == 8 and by_step[3] == pytest.approx(np.mean([r["kl_steps"][3] for r in batched]))
    np.testing.assert_allclose([r["kl"] for r in batched], [r["kl"] for r in single], rtol=1e-3, atol=1e-7)
    d, lo, hi = paired(batched, same, [str(p) for p in prompts])
    assert lo <= d <= hi and d == pytest.approx(summary(batched)["mean_kl"])


def test_each_prompt_is_scored_up_to_the_references_end_of_sequence(quantized, train_csv):
    folder, q = quantized
    _, prompts = _prompts(folder, train_csv, 2)
    ref = OnnxRuntimeBackend(folder, threads=1)
    greedy = np.array([lr.argmax(-1) for _, lr, _ in lockstep(ref, OnnxRuntimeBackend(q, threads=1), prompts,
                                                                  SCHEDULE, 8)])  # (steps, B)
    eos = int(greedy[3, 0])  # pretend the reference's 4th token of prompt 0 ends the sequence
    first = [int(np.flatnonzero(greedy[:, b] == eos)[0]) + 1 if (greedy[:, b] == eos).any() else 8 for b in (0, 1)]
    rows = prompt_divergence(ref, OnnxRuntimeBackend(q, threads=1), prompts, SCHEDULE, 8, [eos], batch_size=2)
    assert [r["tokens"] for r in rows] == first and first[0] <= 4
    assert [len(r["kl_steps"]) for r in rows] == first
    assert len(summary(rows)["kl_by_step"]) == max(first)


def test_cli_pairs_exports_resumes_and_warns(quantized, tiny_export, train_csv, tmp_path, capsys):
    folder, q = quantized
    base = ["divergence", str(folder), "--data", str(train_csv), "--new-tokens", "6", "--speedup", "2",
            "--window", "4", "--threads", "1", "--json", str(tmp_path / "d.json")]
    assert main(base[:2] + [str(q), str(folder)] + base[2:]) == 0
    out = capsys.readouterr()
    assert "| mean KL (nats) |" in out.out and "95% interval" in out.out and "KL, steps 0-5" in out.out
    assert "top-1 agreement" in out.out and "points, 95% interval" in out.out
    saved = json.loads((tmp_path / "d.json").read_text())
    assert len(saved["inputs"]) == 10 and saved["schedule"]["max_layers"] < 6
    rows = saved["exports"][str(folder.resolve())]["rows"]
    assert len(rows) == 10 and all(r["kl"] < 1e-9 for r in rows)  # the reference against itself
    assert saved["exports"][str(q.resolve())]["summary"]["mean_kl"] > 0

    assert main(base[:2] + [str(q)] + base[2:]) == 0  # same settings: nothing scored again
    assert "reusing the scores" in capsys.readouterr().err

    other, _, _ = tiny_export("opt-gqa")
    foreign = tmp_path / "opt-int8"
    quantize_export(other, foreign, QuantConfig("int8-dynamic"), log=lambda s: None)
    assert main(["divergence", str(folder), str(foreign), "--data", str(train_csv), "--limit", "2",
                 "--new-tokens", "2", "--threads", "1"]) == 0
    assert "was quantized from another export" in capsys.readouterr().err


def test_cli_bad_input_is_one_line(quantized, tmp_path, capsys):
    folder, q = quantized
    assert main(["divergence", str(folder), str(q), "--data", str(tmp_path / "nope.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("skipdecode divergence: error:") and "nope.csv" in err and "\n" not in err
    assert main(["divergence", str(folder), str(tmp_path), "--data", str(tmp_path / "nope.csv")]) == 2
    assert "Traceback" not in capsys.readouterr().err
