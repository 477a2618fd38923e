"""The contract every policy kind honours, run on every case in tests/contract/cases_*."""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import pytest

import tests.contract as contract_pkg
from tests.contract.case import (
    PolicyCase,
    assert_conforms,
    assert_nests_equal,
    first_time_step,
    nests_equal,
    sample_time_step,
)
from toolkit.errors import SpecMismatchError, StructureError
from toolkit.trajectories.time_step import TimeStep


def _collect() -> list[PolicyCase]:
    cases = []
    for info in pkgutil.iter_modules(contract_pkg.__path__):
        if info.name.startswith("cases_"):
            module = importlib.import_module(f"tests.contract.{info.name}")
            cases.extend(module.CASES)
    return cases


CASES = _collect()


def _params(filter_fn=lambda c: True):
    return [pytest.param(c, id=c.id, marks=c.marks) for c in CASES if filter_fn(c)]


def _time_step(case: PolicyCase, policy, outer_dims, seed=0):
    rng = np.random.default_rng(seed)
    if case.time_step is not None:
        return case.time_step(policy, outer_dims, rng)
    return sample_time_step(policy.time_step_spec, outer_dims, rng)


def _batch_params():
    params = []
    for c in CASES:
        if c.unbatched:
            params.append(pytest.param(c, (), id=f"{c.id}-unbatched", marks=c.marks))
        if c.batched:
            params.append(pytest.param(c, (3,), id=f"{c.id}-batch3", marks=c.marks))
    return params


@pytest.mark.parametrize(("case", "outer_dims"), _batch_params())
def test_actions_states_and_info_conform_to_specs(case, outer_dims):
    policy = case.make()
    batch_size = outer_dims[0] if outer_dims else None
    state = policy.get_initial_state(batch_size)
    assert_conforms(state, policy.policy_state_spec, outer_dims, "initial state")
    for step in range(4):
        time_step = _time_step(case, policy, outer_dims, seed=step)
        policy_step = policy.action(time_step, state)
        assert_conforms(policy_step.action, policy.action_spec, outer_dims, "action")
        assert_conforms(policy_step.state, policy.policy_state_spec, outer_dims, "state")
        assert_conforms(policy_step.info, policy.info_spec, outer_dims, "info")
        state = policy_step.state


@pytest.mark.parametrize("case", _params())
def test_reset_returns_the_initial_state(case):
    policy = case.make()
    assert_nests_equal(policy.reset(), policy.get_initial_state())


@pytest.mark.parametrize("case", _params())
def test_same_seed_same_action(case):
    policy = case.make()
    outer = (3,) if case.batched else ()
    time_step = _time_step(case, policy, outer)
    state = policy.get_initial_state(outer[0] if outer else None)
    first = policy.action(time_step, state, seed=11)
    policy.action(time_step, state)  # advances the policy's own generator
    again = policy.action(time_step, state, seed=11)
    assert_nests_equal(first.action, again.action)
    assert_nests_equal(first.state, again.state)


@pytest.mark.parametrize("case", _params(lambda c: not c.deterministic))
def test_different_seeds_give_different_actions(case):
    policy = case.make()
    outer = (3,) if case.batched else ()
    time_step = _time_step(case, policy, outer)
    state = policy.get_initial_state(outer[0] if outer else None)
    actions = [policy.action(time_step, state, seed=s).action for s in range(8)]
    assert not all(nests_equal(actions[0], a) for a in actions[1:])


@pytest.mark.parametrize("case", _params(lambda c: c.deterministic))
def test_deterministic_policies_repeat_themselves(case):
    policy = case.make()
    time_step = _time_step(case, policy, ())
    state = policy.get_initial_state()
    assert_nests_equal(
        policy.action(time_step, state).action, policy.action(time_step, state).action
    )


@pytest.mark.parametrize("case", _params())
def test_copy_is_independent(case):
    original, twin = case.make(), case.make()
    outer = (3,) if case.batched else ()
    batch_size = outer[0] if outer else None
    time_step = _time_step(case, original, outer)
    clone = original.copy()
    state = clone.get_initial_state(batch_size)
    for _ in range(3):
        state = clone.action(time_step, state).state
    # Acting with the copy moved neither the original's generator nor its state.
    mine = original.action(time_step, original.get_initial_state(batch_size))
    theirs = twin.action(time_step, twin.get_initial_state(batch_size))
    assert_nests_equal(mine.action, theirs.action)
    assert_nests_equal(mine.state, theirs.state)


@pytest.mark.parametrize("case", _params())
def test_state_round_trips_through_episode_starts(case):
    policy = case.make()
    outer = (2,) if case.batched else ()
    batch_size = outer[0] if outer else None
    time_step = first_time_step(_time_step(case, policy, outer))
    initial = policy.get_initial_state(batch_size)
    state = initial
    for _ in range(3):
        state = policy.action(time_step, state, seed=5).state
    assert_conforms(state, policy.policy_state_spec, outer, "state")
    # Starting again from the initial state replays the first step.
    replay = policy.action(time_step, initial, seed=5)
    fresh = case.make().action(time_step, initial, seed=5)
    assert_nests_equal(replay.action, fresh.action)


@pytest.mark.parametrize("case", _params(lambda c: c.time_step is None))
def test_time_step_of_the_wrong_shape_is_refused(case):
    policy = case.make()
    if policy.time_step_spec is None:
        # No spec to refuse by: a time step of any shape is taken, the action conforms.
        odd = TimeStep(np.ones((), np.int32), np.zeros(()), np.ones(()), np.zeros((2, 7)))
        assert_conforms(policy.action(odd).action, policy.action_spec, (), "action")
        return
    assert policy.validate_args  # every case checks its inputs
    time_step = _time_step(case, policy, ())
    bad = time_step._replace(observation=_grow_first_leaf(time_step.observation))
    with pytest.raises((SpecMismatchError, StructureError), match=r"observation.*expected shape"):
        policy.action(bad, policy.get_initial_state())


def _grow_first_leaf(observation):
    from toolkit import nest

    leaves = nest.flatten(observation)
    leaves[0] = np.concatenate(
        [np.reshape(leaves[0], -1), np.zeros(1, np.asarray(leaves[0]).dtype)]
    )
    return nest.pack_sequence_as(observation, leaves)
