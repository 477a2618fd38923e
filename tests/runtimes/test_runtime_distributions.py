"""The runtime's numpy distributions against TensorFlow Probability."""

from __future__ import annotations

import numpy as np
import pytest

from runtimes import distributions as rd
from toolkit.errors import UnsupportedError

tf = pytest.importorskip("tensorflow")
tfp = pytest.importorskip("tensorflow_probability")
tfd = tfp.distributions

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(5, 4)).astype(np.float32)
LOC = RNG.normal(size=(5, 3)).astype(np.float32)
SCALE = RNG.uniform(0.1, 2.0, size=(5, 3)).astype(np.float32)


def test_categorical_matches_tfp():
    ours = rd.Categorical(LOGITS, shift=-1, dtype=np.int32)
    theirs = tfd.Categorical(logits=LOGITS)
    values = np.array([-1, 0, 1, 2, 0])
    np.testing.assert_allclose(
        ours.log_prob(values), theirs.log_prob(values + 1).numpy(), atol=1e-6
    )
    np.testing.assert_allclose(ours.entropy(), theirs.entropy().numpy(), atol=1e-6)
    np.testing.assert_array_equal(ours.mode(), theirs.mode().numpy() - 1)
    assert ours.mode().dtype == np.int32
    np.testing.assert_allclose(ours.probs(), theirs.probs_parameter().numpy(), atol=1e-6)
    assert np.all(ours.log_prob(np.array([-2, 3, 0, 0, 0]))[:2] == -np.inf)


def test_categorical_event_shape_one():
    ours = rd.Categorical(LOGITS[:, None, :], shift=0, event_ndims=1)
    theirs = tfd.Independent(tfd.Categorical(logits=LOGITS[:, None, :]), 1)
    values = np.array([[0], [1], [2], [3], [1]])
    np.testing.assert_allclose(ours.log_prob(values), theirs.log_prob(values).numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.entropy(), theirs.entropy().numpy(), atol=1e-6)
    assert ours.sample(0).shape == (5, 1)


def test_categorical_sampling_frequencies():
    logits = np.log(np.array([[0.1, 0.2, 0.7]] * 20000, np.float32))
    samples = rd.Categorical(logits, shift=5).sample(1)
    freq = np.bincount(samples - 5, minlength=3) / len(samples)
    # sd of each frequency <= 0.0033 at n=20000: 0.015 is > 4 sd.
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.7], atol=0.015)


def test_normal_matches_tfp_independent():
    ours = rd.Normal(LOC, SCALE, event_ndims=1)
    theirs = tfd.Independent(tfd.Normal(LOC, SCALE), 1)
    values = RNG.normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_allclose(ours.log_prob(values), theirs.log_prob(values).numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.entropy(), theirs.entropy().numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.mode(), theirs.mode().numpy())
    np.testing.assert_allclose(ours.stddev(), theirs.stddev().numpy(), rtol=1e-6)


def test_normal_sampling_statistics():
    loc = np.full((50000, 2), [1.0, -3.0], np.float32)
    scale = np.full((50000, 2), [0.5, 2.0], np.float32)
    samples = rd.Normal(loc, scale, event_ndims=1).sample(3)
    # Standard errors: 0.5/sqrt(5e4)=0.0022 and 2/sqrt(5e4)=0.009.
    np.testing.assert_allclose(samples.mean(axis=0), [1.0, -3.0], atol=0.04)
    np.testing.assert_allclose(samples.std(axis=0), [0.5, 2.0], rtol=0.02)


def test_deterministic_matches_tfp():
    ours = rd.Deterministic(LOC, event_ndims=1)
    theirs = tfd.Independent(tfd.Deterministic(LOC), 1)
    np.testing.assert_allclose(ours.log_prob(LOC), theirs.log_prob(LOC).numpy())
    other = LOC + 1
    np.testing.assert_allclose(ours.log_prob(other), theirs.log_prob(other).numpy())
    np.testing.assert_array_equal(ours.sample(0), LOC)


@pytest.mark.parametrize(
    "dist",
    [rd.Categorical(LOGITS), rd.Normal(LOC, SCALE)],
    ids=["categorical", "normal"],
)
def test_seeds_reproduce(dist):
    np.testing.assert_array_equal(dist.sample(7), dist.sample(7))
    assert not np.array_equal(dist.sample(7), dist.sample(8))


def test_unknown_family():
    with pytest.raises(UnsupportedError, match="distribution family 'beta' is not supported"):
        rd.make_distribution("beta", {})


def test_uniform_matches_tfp():
    low = RNG.uniform(-2.0, 0.0, size=(5, 3)).astype(np.float32)
    high = low + RNG.uniform(0.5, 3.0, size=(5, 3)).astype(np.float32)
    ours = rd.Uniform(low, high, event_ndims=1)
    theirs = tfd.Independent(tfd.Uniform(low, high), 1)
    inside = (low + 0.3 * (high - low)).astype(np.float32)
    outside = inside.copy()
    outside[::2, 1] = high[::2, 1] + 1.0
    for values in (inside, outside, low, high):
        np.testing.assert_allclose(
            ours.log_prob(values), theirs.log_prob(values).numpy(), rtol=1e-5
        )
    assert np.all(np.isneginf(ours.log_prob(outside)[::2]))
    np.testing.assert_allclose(ours.entropy(), theirs.entropy().numpy(), rtol=1e-5)
    np.testing.assert_allclose(ours.mean(), theirs.mean().numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.stddev(), theirs.stddev().numpy(), rtol=1e-5)
    with pytest.raises(UnsupportedError, match="Uniform distribution has no mode"):
        ours.mode()


def test_uniform_sampling_statistics():
    low = np.full((40000, 2), [0.0, -3.0], np.float32)
    high = np.full((40000, 2), [1.0, 5.0], np.float32)
    samples = rd.Uniform(low, high, event_ndims=1).sample(4)
    assert samples.dtype == np.float32
    assert np.all(samples >= low) and np.all(samples < high)
    # Standard errors: (high - low) / sqrt(12 * 40000) = 0.0014 and 0.012.
    np.testing.assert_allclose(samples.mean(axis=0), [0.5, 1.0], atol=0.06)
    np.testing.assert_allclose(samples.std(axis=0), [1 / np.sqrt(12), 8 / np.sqrt(12)], rtol=0.02)


def test_categorical_with_masked_logits_matches_tfp():
    logits = np.array([[0.0, -np.inf, 1.0, 0.5], [-np.inf, 2.0, -np.inf, -np.inf]], np.float32)
    ours = rd.Categorical(logits, shift=2)
    theirs = tfd.Categorical(logits=logits)
    np.testing.assert_allclose(ours.entropy(), theirs.entropy().numpy(), atol=1e-6)
    assert np.all(np.isfinite(ours.entropy()))
    values = np.array([3, 3])
    np.testing.assert_allclose(
        ours.log_prob(values), theirs.log_prob(values - 2).numpy(), atol=1e-6
    )
    samples = rd.Categorical(np.tile(logits, (500, 1)), shift=2).sample(5)
    assert 3 not in samples[0::2] and set(samples[1::2]) == {3}


def test_make_distribution_builds_every_exported_family():
    built = {
        "deterministic": rd.make_distribution(
            "deterministic", {"loc": LOC}, event_ndims=1, dtype="float32"
        ),
        "categorical": rd.make_distribution(
            "categorical", {"logits": LOGITS}, event_ndims=0, dtype="int64", shift=1
        ),
        "normal": rd.make_distribution(
            "normal", {"loc": LOC, "scale": SCALE}, event_ndims=1, dtype="float32"
        ),
        "uniform": rd.make_distribution(
            "uniform", {"low": LOC, "high": LOC + SCALE}, event_ndims=1, dtype="float32"
        ),
    }
    for family, distribution in built.items():
        assert distribution.family == family
        assert distribution.sample(0).shape[0] == 5
