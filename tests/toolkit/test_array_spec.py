"""ArraySpec / BoundedArraySpec: value semantics, checks, sampling, JSON."""

from __future__ import annotations

import collections
import json
import pickle

import numpy as np
import pytest

from toolkit.errors import SpecError, SpecMismatchError, StructureError
from toolkit.specs import array_spec
from toolkit.specs.array_spec import ArraySpec, BoundedArraySpec


class TestValueObject:
    def test_equality_ignores_names_but_not_shape_dtype_or_bounds(self):
        assert ArraySpec((2,), np.float32, "a") == ArraySpec((2,), np.float32, "b")
        assert ArraySpec((2,), np.float32) != ArraySpec((3,), np.float32)
        assert ArraySpec((2,), np.float32) != ArraySpec((2,), np.float64)
        assert BoundedArraySpec((2,), np.int32, 0, 3) == BoundedArraySpec((2,), np.int32, [0, 0], 3)
        assert BoundedArraySpec((2,), np.int32, 0, 3) != BoundedArraySpec((2,), np.int32, 0, 4)
        assert ArraySpec((2,), np.int32) != BoundedArraySpec((2,), np.int32)

    def test_hashable_and_usable_as_dict_keys(self):
        table = {ArraySpec((2,), np.float32): 1}
        assert table[ArraySpec((2,), np.float32, name="x")] == 1

    def test_replace_keeps_what_is_not_replaced(self):
        spec = BoundedArraySpec((2,), np.float32, -1.0, 1.0, name="force")
        wider = spec.replace(maximum=5.0)
        assert wider.maximum == 5.0 and wider.minimum == -1.0 and wider.name == "force"
        assert spec.maximum == 1.0  # the original is untouched
        assert spec.replace(shape=(3,)).shape == (3,)
        with pytest.raises(TypeError, match="unexpected arguments"):
            spec.replace(colour="red")

    def test_replace_dtype_narrows_bounds_that_no_longer_fit(self):
        spec = BoundedArraySpec((), np.int64)
        narrowed = spec.replace(dtype=np.int8)
        assert narrowed.minimum == -128 and narrowed.maximum == 127

    def test_bounds_are_read_only(self):
        spec = BoundedArraySpec((2,), np.float32, -1.0, 1.0)
        with pytest.raises(ValueError, match="read-only"):
            spec.minimum[0] = 5
        with pytest.raises(AttributeError):
            spec.minimum = np.zeros(2)

    def test_missing_bounds_are_the_dtype_limits(self):
        spec = BoundedArraySpec((), np.uint8)
        assert (spec.minimum, spec.maximum) == (0, 255)
        assert BoundedArraySpec((), np.float32).maximum == np.finfo(np.float32).max

    def test_pickle_round_trip(self):
        spec = BoundedArraySpec((2,), np.float32, -1.0, [1.0, 2.0], name="a")
        again = pickle.loads(pickle.dumps(spec))
        assert again == spec and again.name == "a"

    def test_generate_value_is_valid(self):
        spec = BoundedArraySpec((2, 3), np.int32, 4, 9)
        value = spec.generate_value()
        assert spec.check_array(value)
        assert np.all(value == 4)


class TestBadSpecs:
    def test_minimum_above_maximum(self):
        with pytest.raises(
            SpecError,
            match=r"spec 'x': min has values greater than max: minimum 3 is greater than maximum 1",
        ):
            BoundedArraySpec((), np.int32, 3, 1, name="x")

    def test_minimum_above_maximum_names_the_element(self):
        with pytest.raises(
            SpecError, match=r"minimum 2.0 is greater than maximum 1.0 at index \(1,\)"
        ):
            BoundedArraySpec((2,), np.float32, [0.0, 2.0], 1.0)

    def test_bounds_that_do_not_broadcast(self):
        with pytest.raises(
            SpecError,
            match=r"minimum of shape \(3,\) is not compatible with shape \(2,\) \(does not "
            r"broadcast to it\)",
        ):
            BoundedArraySpec((2,), np.float32, [0.0, 0.0, 0.0], 1.0)

    def test_bounds_the_dtype_cannot_hold(self):
        with pytest.raises(
            SpecError, match=r"maximum 300 does not fit dtype uint8 \(range \[0, 255\]\)"
        ):
            BoundedArraySpec((), np.uint8, 0, 300)
        with pytest.raises(SpecError, match="minimum -1 does not fit dtype uint8"):
            BoundedArraySpec((), np.uint8, -1, 3)
        with pytest.raises(SpecError, match="does not fit dtype float16"):
            BoundedArraySpec((), np.float16, 0.0, 1e6)

    def test_fractional_bounds_for_integers(self):
        with pytest.raises(
            SpecError, match=r"maximum 2\.5 is not a whole number, as dtype int32 needs"
        ):
            BoundedArraySpec((), np.int32, 0, 2.5)

    def test_unknown_dtype_and_bad_shape(self):
        with pytest.raises(SpecError, match="expected a numeric or bool dtype, got object"):
            ArraySpec((), object)
        with pytest.raises(SpecError, match="non-negative"):
            ArraySpec((-1,), np.float32)


class TestCheckAndConform:
    def test_check_array(self):
        spec = BoundedArraySpec((2,), np.int32, 0, 5)
        assert spec.check_array(np.array([0, 5], np.int32))
        assert not spec.check_array(np.array([0, 6], np.int32))
        assert not spec.check_array(np.array([0, 5], np.int64))
        assert not spec.check_array(np.array([0, 5, 1], np.int32))

    def test_validate_messages(self):
        spec = BoundedArraySpec((2,), np.int32, 0, 5, name="move")
        with pytest.raises(SpecMismatchError, match=r"^move: expected shape \(2,\), got \(3,\)$"):
            spec.validate(np.zeros(3, np.int32))
        with pytest.raises(SpecMismatchError, match=r"^move: expected dtype int32, got float64$"):
            spec.validate(np.zeros(2))
        with pytest.raises(
            SpecMismatchError, match=r"^move: expected values in \[0, 5\], got 7 at index \(1,\)$"
        ):
            spec.validate(np.array([1, 7], np.int32))

    def test_conform_casts_safely_and_refuses_unsafe(self):
        spec = ArraySpec((3,), np.float32, name="velocity")
        array, outer = spec.conform(np.ones((4, 3), np.float64))
        assert array.dtype == np.float32 and outer == (4,)
        ints, _ = ArraySpec((), np.int32).conform(np.int64(7))
        assert ints.dtype == np.int32 and ints == 7
        with pytest.raises(
            SpecMismatchError,
            match=r"velocity: expected dtype int32, got float64 \(unsafe conversion refused\)",
        ):
            ArraySpec((3,), np.int32, name="velocity").conform(np.ones(3))
        with pytest.raises(SpecMismatchError, match=r"values outside \[-128, 127\]"):
            ArraySpec((), np.int8).conform(np.int64(1000))

    def test_conform_nest_reports_the_path(self):
        spec = {"position": ArraySpec((2,), np.float32), "velocity": ArraySpec((3,), np.float32)}
        value = {"position": np.zeros(2), "velocity": np.zeros(4)}
        with pytest.raises(
            SpecMismatchError, match=r"^observation/velocity: expected shape \(3,\), got \(4,\)$"
        ):
            array_spec.conform_nest(value, spec, "observation")

    def test_conform_nest_needs_one_batch(self):
        spec = (ArraySpec((2,), np.float32), ArraySpec((), np.float32))
        with pytest.raises(
            SpecMismatchError,
            match=r"obs/1: expected shape \(3,\) \(outer dims \(3,\)\), got \(4,\)",
        ):
            array_spec.conform_nest((np.zeros((3, 2)), np.zeros(4)), spec, "obs")

    def test_structure_mismatch_messages(self):
        spec = {"a": ArraySpec((), np.float32), "b": ArraySpec((), np.float32)}
        with pytest.raises(
            StructureError,
            match=r"obs: expected keys \['a', 'b'\], got missing \['b'\], unexpected \['c'\]",
        ):
            array_spec.conform_nest({"a": 0.0, "c": 1.0}, spec, "obs")
        with pytest.raises(
            StructureError, match="obs: expected a sequence of 2, got a sequence of 3"
        ):
            array_spec.conform_nest((1.0, 2.0, 3.0), (spec["a"], spec["b"]), "obs")


class TestSampling:
    @pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint64])
    def test_integer_samples_cover_inclusive_bounds(self, dtype):
        spec = BoundedArraySpec((), dtype, 2, 4)
        values = spec.sample(np.random.default_rng(0), outer_dims=(2000,))
        assert values.dtype == dtype
        assert set(np.unique(values).tolist()) == {2, 3, 4}

    def test_array_bounds_per_element(self):
        spec = BoundedArraySpec((2,), np.float32, [-1.0, 10.0], [0.0, 11.0])
        values = spec.sample(1, outer_dims=(500,))
        assert values.shape == (500, 2) and values.dtype == np.float32
        assert np.all(values[:, 0] >= -1) and np.all(values[:, 0] <= 0)
        assert np.all(values[:, 1] >= 10) and np.all(values[:, 1] <= 11)
        # Uniform, not stuck at a bound: the mean sits mid-range.
        assert abs(values[:, 1].mean() - 10.5) < 0.05

    def test_full_int64_range_and_bool(self):
        full = BoundedArraySpec((), np.int64).sample(0, outer_dims=(100,))
        assert full.dtype == np.int64 and np.unique(full).size > 90
        flags = ArraySpec((), np.bool_).sample(0, outer_dims=(1000,))
        assert flags.dtype == np.bool_ and 400 < flags.sum() < 600

    def test_unbounded_float_samples_are_finite_and_moderate(self):
        values = BoundedArraySpec((3,), np.float32).sample(0, outer_dims=(100,))
        assert np.all(np.isfinite(values)) and np.all(
            np.abs(values) <= array_spec.FLOAT_SAMPLE_LIMIT
        )
        normal = ArraySpec((3,), np.float64).sample(0, outer_dims=(1000,))
        assert abs(normal.std() - 1.0) < 0.1

    def test_seed_reproduces(self):
        spec = {
            "a": BoundedArraySpec((2,), np.float32, 0, 1),
            "b": BoundedArraySpec((), np.int32, 0, 9),
        }
        first = array_spec.sample_spec_nest(spec, 42, (5,))
        again = array_spec.sample_spec_nest(spec, 42, (5,))
        other = array_spec.sample_spec_nest(spec, 43, (5,))
        np.testing.assert_array_equal(first["a"], again["a"])
        np.testing.assert_array_equal(first["b"], again["b"])
        assert not np.array_equal(first["a"], other["a"])


Point = collections.namedtuple("Point", ["x", "y"])


class TestJson:
    def test_round_trip_of_a_nest_through_json_text(self):
        spec = {
            "pos": Point(
                ArraySpec((2,), np.float32, "px"), BoundedArraySpec((), np.int64, -3, 3, "py")
            ),
            "list": [BoundedArraySpec((2,), np.float32, [-np.inf, 0.0], [np.inf, 1.5])],
            "tuple": (ArraySpec((), np.bool_),),
        }
        text = json.dumps(array_spec.spec_nest_to_json(spec), allow_nan=False)
        again = array_spec.spec_nest_from_json(json.loads(text))
        assert again["pos"].x == spec["pos"].x and again["pos"].x.name == "px"
        assert again["pos"].y == spec["pos"].y
        assert type(again["pos"]).__name__ == "Point" and again["pos"]._fields == ("x", "y")
        assert isinstance(again["list"], list) and again["list"][0] == spec["list"][0]
        assert isinstance(again["tuple"], tuple) and again["tuple"][0] == spec["tuple"][0]

    def test_float32_bounds_survive_exactly(self):
        spec = BoundedArraySpec((), np.float32, np.float32(0.1), np.float32(2.0 / 3.0))
        again = ArraySpec.from_json(json.loads(json.dumps(spec.to_json())))
        assert again.minimum == spec.minimum and again.maximum == spec.maximum

    def test_bad_json_is_refused_clearly(self):
        with pytest.raises(SpecError, match="unknown spec kind 'pickle'"):
            array_spec.spec_nest_from_json({"kind": "pickle", "data": "..."})
        with pytest.raises(SpecError, match="expected a numeric or bool dtype, got object"):
            ArraySpec.from_json({"kind": "array_spec", "shape": [], "dtype": "object"})
        with pytest.raises(SpecError, match="array_spec: missing field 'dtype'"):
            ArraySpec.from_json({"kind": "array_spec", "shape": []})
        with pytest.raises(SpecError, match="expected a number"):
            ArraySpec.from_json(
                {
                    "kind": "bounded_array_spec",
                    "shape": [],
                    "dtype": "float32",
                    "minimum": "__import__('os')",
                    "maximum": 1,
                }
            )

    def test_from_array(self):
        spec = ArraySpec.from_array(np.zeros((2, 3), np.uint8), name="img")
        assert spec == ArraySpec((2, 3), np.uint8) and spec.name == "img"


def test_namedtuple_field_order_survives_sorted_json():
    from toolkit.trajectories import time_step as ts

    spec = ts.time_step_spec(ArraySpec((2,), np.float32))
    text = json.dumps(array_spec.spec_nest_to_json(spec), sort_keys=True)
    again = array_spec.spec_nest_from_json(json.loads(text))
    assert type(again) is ts.TimeStep
    assert again.observation == ArraySpec((2,), np.float32)
    assert again.step_type == ArraySpec((), np.int32)
