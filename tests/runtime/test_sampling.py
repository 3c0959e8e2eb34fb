import numpy as np
import pytest

from skipdecode.runtime.sampling import SamplingConfig, sample


def test_greedy_is_argmax():
    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32)
    assert (sample(logits, SamplingConfig(), np.random.default_rng()) == logits.argmax(-1)).all()


def test_top_k_and_top_p_restrict_the_support():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.1, 0.06, 0.04]] * 2000))
    k2 = sample(logits, SamplingConfig(temperature=1.0, top_k=2), rng)
    assert set(k2.tolist()) == {0, 1}
    p = sample(logits, SamplingConfig(temperature=1.0, top_p=0.85), rng)
    assert set(p.tolist()) == {0, 1, 2}  # 0.5 + 0.3 < 0.85 needs the third
    share = (p == 0).mean()
    assert abs(share - 0.5 / 0.9) < 0.05


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_k=-1), dict(top_p=0), dict(top_p=1.5)])
def test_bad_sampling_options(kw):
    with pytest.raises(ValueError):
        SamplingConfig(**kw)
