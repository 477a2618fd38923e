"""The runtime's numpy tanh_normal (TF-Agents' SquashToSpecNormal) against TFP."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from runtimes import distributions as dists
from toolkit import distribution_families as families
from toolkit.errors import UnsupportedError
from toolkit.specs.tensor_spec import BoundedTensorSpec

tfd, tfb = tfp.distributions, tfp.bijectors

RNG = np.random.default_rng(0)
LOC = RNG.normal(0.0, 1.0, (5, 2)).astype(np.float32)
SCALE = RNG.uniform(0.2, 1.5, (5, 2)).astype(np.float32)
LOW = np.broadcast_to(np.array([-2.0, 0.0], np.float32), (5, 2))
HIGH = np.broadcast_to(np.array([1.0, 3.0], np.float32), (5, 2))
CENTER, HALF = (HIGH + LOW) / 2, (HIGH - LOW) / 2


def ours() -> dists.TanhNormal:
    return dists.make_distribution(
        families.TANH_NORMAL,
        {"loc": LOC, "scale": SCALE, "low": LOW, "high": HIGH},
        event_ndims=1,
        dtype="float32",
    )


def tfp_reference() -> tfd.Distribution:
    """The squashed normal built from TFP's own pieces (TF-Agents' construction)."""
    chain = tfb.Chain([tfb.Shift(CENTER)(tfb.Scale(HALF)), tfb.Tanh()])
    return tfd.TransformedDistribution(tfd.MultivariateNormalDiag(LOC, SCALE), chain)


def test_the_family_is_declared_with_its_parameters():
    assert families.FAMILIES[families.TANH_NORMAL] == ("loc", "scale", "low", "high")
    assert isinstance(ours(), dists.TanhNormal)


def test_log_prob_matches_tfp_inside_the_bounds():
    values = tfp_reference().sample(7, seed=1).numpy()  # (7, 5, 2), strictly inside
    expected = tfp_reference().log_prob(values).numpy()
    got = np.stack([ours().log_prob(v) for v in values])
    assert got.shape == (7, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_log_prob_matches_the_registered_tf_agents_class():
    from exporters.tf_agents import distributions as tf_agents_types

    cls = tf_agents_types.register().get(tf_agents_types.SQUASH_TO_SPEC_NORMAL)
    if cls is None:
        pytest.skip("TF-Agents itself registered SquashToSpecNormal in this process")
    spec = BoundedTensorSpec((2,), tf.float32, LOW[0], HIGH[0])
    squashed = cls(tfd.MultivariateNormalDiag(LOC, SCALE), spec)
    values = squashed.sample(3, seed=2).numpy()
    np.testing.assert_allclose(
        np.stack([ours().log_prob(v) for v in values]),
        squashed.log_prob(values).numpy(),
        rtol=1e-4,
        atol=1e-4,
    )
    np.testing.assert_allclose(ours().mode(), squashed.mode().numpy(), atol=1e-6)
    np.testing.assert_allclose(ours().stddev(), squashed.stddev().numpy(), atol=1e-6)


def test_outside_the_bounds_has_no_mass():
    value = np.array([[1.5, 1.0]] * 5, np.float32)  # 1.5 > high of dim 0
    assert np.all(np.isneginf(ours().log_prob(value)))


def test_mode_and_stddev_are_tf_agents_definitions():
    np.testing.assert_allclose(ours().mode(), CENTER + HALF * np.tanh(LOC), atol=1e-6)
    np.testing.assert_allclose(ours().mean(), ours().mode())
    np.testing.assert_allclose(ours().stddev(), HALF * np.tanh(SCALE), atol=1e-6)


def test_samples_match_tfp_statistics_and_stay_in_bounds():
    n = 4000
    many = dists.TanhNormal(
        np.broadcast_to(LOC, (n, 5, 2)), SCALE, LOW, HIGH, event_ndims=1, dtype="float32"
    )
    mine = many.sample(np.random.default_rng(1))
    assert mine.dtype == np.float32 and mine.shape == (n, 5, 2)
    assert np.all(mine >= LOW[0]) and np.all(mine <= HIGH[0])
    theirs = tfp_reference().sample(n, seed=3).numpy()
    for row in range(5):
        for d in range(2):
            a, b = mine[:, row, d].astype(np.float64), theirs[:, row, d].astype(np.float64)
            se = np.sqrt(a.var() / n + b.var() / n)
            assert abs(a.mean() - b.mean()) < 4 * se, (row, d)


def test_entropy_is_refused_like_tf_agents():
    with pytest.raises(UnsupportedError, match="no closed-form entropy"):
        ours().entropy()
