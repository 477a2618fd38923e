"""The TF-free rule: the core works in a process where TensorFlow cannot be imported."""

from __future__ import annotations

from tests.subprocess_utils import run_python


def test_the_blocker_really_blocks():
    result = run_python("import tensorflow", without_tensorflow=True)
    assert result.returncode != 0
    assert "tensorflow is blocked" in result.stderr


def test_tf_agents_helpers_work_without_tensorflow():
    result = run_python(
        """
        import numpy as np
        from toolkit.specs import array_spec
        from toolkit.trajectories import trajectory, time_step as ts
        from toolkit.utils import nest_utils

        spec = {"a": array_spec.ArraySpec((2,), np.float32)}
        rows = [{"a": np.full(2, i, np.float32)} for i in range(3)]
        batch = nest_utils.stack_nested_arrays(rows)
        assert nest_utils.get_outer_array_shape(batch, spec) == (3,)
        assert nest_utils.unstack_nested_arrays(batch)[2]["a"].tolist() == [2.0, 2.0]
        assert nest_utils.is_batched_nested_tensors(batch, spec)
        assert nest_utils.prune_extra_keys({"a": 1}, {"a": 2, "b": 3}) == {"a": 2}
        picked = nest_utils.where(np.array([True, False]), np.zeros(2), np.ones(2))
        assert picked.tolist() == [0.0, 1.0]
        step = trajectory.mid(batch, np.zeros(3), (), np.ones(3), np.ones(3))
        assert step.is_mid().all() and step.step_type.dtype == np.int32
        episode = trajectory.from_episode(np.arange(4.0), (), (), np.ones(4))
        assert episode.step_type.tolist() == [0, 1, 1, 1]
        assert episode.next_step_type.tolist() == [1, 1, 1, 2]
        pair = trajectory.to_transition(nest_utils.batch_nested_array(episode))
        assert pair.next_time_step.observation.tolist() == [[1.0, 2.0, 3.0]]
        tests.tf_blocker.assert_no_heavy_modules()
        print("ok")
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_core_modules_import_and_work_without_tensorflow():
    result = run_python(
        """
        import sys
        import numpy as np
        import toolkit, runtimes, exporters  # package __init__s import nothing heavy
        from toolkit import bundle, distribution_families, errors, nest, specs
        from toolkit.specs import array_spec
        from toolkit.trajectories import time_step as ts, policy_step
        from toolkit.policies import py_policy, random_py_policy, scripted_py_policy

        obs = {"velocity": array_spec.ArraySpec((3,), np.float32)}
        spec = array_spec.BoundedArraySpec((2,), np.int32, -10, 10)
        random = random_py_policy.RandomPyPolicy(ts.time_step_spec(obs), spec, seed=0)
        step = random.action(ts.restart({"velocity": np.zeros((4, 3))}, observation_spec=obs))
        assert step.action.shape == (4, 2)
        scripted = scripted_py_policy.ScriptedPyPolicy(None, spec, [(2, [1, 2])])
        state = scripted.action(None, scripted.get_initial_state()).state
        assert scripted.action(None, state).action.tolist() == [1, 2]
        assert array_spec.spec_nest_from_json(array_spec.spec_nest_to_json(obs)) == obs
        assert specs.BoundedArraySpec is array_spec.BoundedArraySpec  # as tf_agents.specs
        tests.tf_blocker.assert_no_heavy_modules()
        print("ok")
        """,
        without_tensorflow=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
