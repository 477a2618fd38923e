"""Array specs: value objects that describe numpy arrays (TF-free).

Modelled on dm_env's ``specs.py``: specs are immutable, compare by value, have a
``replace()`` and a ``generate_value()``, and can check and sample arrays. Their JSON
form (plain dicts, no pickle) is what bundle manifests store.

Over 600 lines on purpose: the two spec classes with the nest, conversion and JSON
helpers built on them, as TF-Agents' ``array_spec.py``; no part stands alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from toolkit import nest
from toolkit.errors import SpecError, SpecMismatchError, SpecTypeError

__all__ = [
    "ArraySpec",
    "BoundedArraySpec",
    "add_outer_dims_nest",
    "as_array_spec",
    "as_rng",
    "assert_arrays_spec_nest",
    "check_arrays_nest",
    "conform_nest",
    "is_bounded",
    "is_continuous",
    "is_discrete",
    "sample_bounded_spec",
    "sample_spec_nest",
    "spec_nest_from_json",
    "spec_nest_to_json",
    "zero_spec_nest",
]

# Plain float specs and infinite bounds are sampled inside this range, so that sampled
# observations stay useful for parity checks instead of overflowing a network.
FLOAT_SAMPLE_LIMIT = 1e3

_ALLOWED_DTYPES = frozenset(
    np.dtype(t).name
    for t in (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
    )
)


def _as_dtype(dtype: Any) -> np.dtype:
    # TF dtypes (and TensorSpecs' dtypes) expose their numpy twin.
    dtype = getattr(dtype, "as_numpy_dtype", dtype)
    try:
        result = np.dtype(dtype)
    except TypeError as e:
        raise SpecTypeError(f"unknown dtype {dtype!r}") from e
    if result.name not in _ALLOWED_DTYPES:
        raise SpecError(f"expected a numeric or bool dtype, got {result.name}")
    return result


def _as_shape(shape: Any) -> tuple[int, ...]:
    if shape is None:
        raise SpecError("expected a shape (a tuple of ints), got None")
    as_list = getattr(shape, "as_list", None)  # tf.TensorShape
    if as_list is not None:
        shape = as_list()
    if isinstance(shape, (int, np.integer)):
        # As TF-Agents: 3 is no shape; (3,) or () say which was meant.
        raise SpecTypeError(f"expected a shape (a tuple of ints), got the int {shape}")
    try:
        result = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as e:
        raise SpecTypeError(f"expected a shape of ints, got {shape!r}") from e
    if any(d < 0 for d in result):
        raise SpecError(f"expected a shape of non-negative ints, got {result}")
    return result


def _spec_shape(spec: Any) -> Any:
    # tf.TensorShape and tuples: anything _as_shape takes.
    return spec.shape


def _describe_dtype(value: np.ndarray) -> str:
    return value.dtype.name


class ArraySpec:
    """Describes a numpy array: its shape, dtype and an optional name.

    Equality compares shape and dtype (and bounds, for bounded specs), not names,
    as in TF-Agents.
    """

    __slots__ = ("_dtype", "_name", "_shape")

    def __init__(self, shape: Sequence[int], dtype: Any, name: str | None = None):
        self._shape = _as_shape(shape)
        self._dtype = _as_dtype(dtype)
        self._name = name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def name(self) -> str | None:
        return self._name

    def __repr__(self) -> str:
        return f"ArraySpec(shape={self.shape}, dtype={self.dtype.name}, name={self.name!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._shape == other._shape and self._dtype == other._dtype

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._shape, self._dtype))

    def __reduce__(self):
        return type(self), (self._shape, self._dtype, self._name)

    def replace(self, **kwargs: Any) -> ArraySpec:
        """Returns a copy with the given constructor arguments replaced."""
        args = {"shape": self.shape, "dtype": self.dtype, "name": self.name}
        unknown = set(kwargs) - set(args)
        if unknown:
            raise TypeError(f"replace() got unexpected arguments {sorted(unknown)}")
        args.update(kwargs)
        return type(self)(**args)

    # --- checking ---------------------------------------------------------------

    def check_array(self, array: Any) -> bool:
        """True when ``array`` has exactly this spec's shape and dtype (and bounds)."""
        try:
            self.validate(array)
        except SpecMismatchError:
            return False
        return True

    def validate(self, value: Any, path: str = "") -> np.ndarray:
        """Returns ``value`` as an array, or raises SpecMismatchError saying why not.

        Strict: the shape must match exactly and the dtype must be this spec's.
        """
        path = path or (self.name or "")
        array = np.asarray(value)
        if array.shape != self.shape:
            raise SpecMismatchError(path, f"shape {self.shape}", f"{array.shape}")
        if array.dtype != self.dtype:
            raise SpecMismatchError(path, f"dtype {self.dtype.name}", _describe_dtype(array))
        self._check_bounds(array, path)
        return array

    def _check_bounds(self, array: np.ndarray, path: str) -> None:
        del array, path

    def conform(self, value: Any, path: str = "", outer_dims: tuple[int, ...] | None = None):
        """Converts ``value`` to this spec's dtype where that is safe, checking its shape.

        Safe conversions: same kind to a narrower or wider type (float64 -> float32,
        int64 -> int32 when the values fit), bool -> int, int/bool -> float. Refused:
        float -> int, negative -> unsigned, anything that changes the values.

        Args:
          value: array-like.
          path: where the value sits in its nest, for error messages.
          outer_dims: the expected outer (batch) dims; None accepts any.

        Returns:
          ``(array, outer_dims)``.
        """
        path = path or (self.name or "")
        array = value if isinstance(value, np.ndarray) else _as_numeric_array(value, path)
        if array.dtype.kind not in "biufc":
            raise SpecMismatchError(
                path, f"a numeric array of dtype {self.dtype.name}", f"dtype {array.dtype.name}"
            )
        n = len(self.shape)
        if array.ndim < n or array.shape[array.ndim - n :] != self.shape:
            expected = f"shape {self.shape}"
            if outer_dims:
                expected = f"shape {tuple(outer_dims) + self.shape}"
            raise SpecMismatchError(path, expected, f"{array.shape}")
        found_outer = array.shape[: array.ndim - n]
        if outer_dims is not None and found_outer != tuple(outer_dims):
            raise SpecMismatchError(
                path,
                f"shape {tuple(outer_dims) + self.shape} (outer dims {tuple(outer_dims)})",
                f"{array.shape}",
            )
        if array.dtype != self.dtype:
            array = _safe_cast(array, self.dtype, path)
        return array, found_outer

    # --- values -----------------------------------------------------------------

    def generate_value(self) -> np.ndarray:
        """A valid array of this spec (zeros, or the minimum for bounded specs)."""
        return np.zeros(self.shape, self.dtype)

    def zeros(self, outer_dims: Sequence[int] = ()) -> np.ndarray:
        return np.zeros(tuple(outer_dims) + self.shape, self.dtype)

    def sample(
        self, rng: np.random.Generator | int | None = None, outer_dims: Sequence[int] = ()
    ) -> np.ndarray:
        """A random array of this spec.

        Plain float specs draw from a standard normal; integer specs from the dtype's
        whole range; bool specs fairly.
        """
        rng = as_rng(rng)
        shape = tuple(outer_dims) + self.shape
        if self.dtype.kind == "f":
            return rng.standard_normal(shape).astype(self.dtype)
        return BoundedArraySpec.from_spec(self).sample(rng, outer_dims)

    @classmethod
    def from_array(cls, array: Any, name: str | None = None) -> ArraySpec:
        """The spec of an array (shape and dtype)."""
        array = np.asarray(array)
        return cls(array.shape, array.dtype, name)

    @classmethod
    def from_spec(cls, spec: Any, name: str | None = None) -> ArraySpec:
        """An ArraySpec with the shape, dtype and name (or ``name``) of any spec-like object."""
        return ArraySpec(
            _spec_shape(spec), spec.dtype, name if name is not None else getattr(spec, "name", None)
        )

    # --- JSON -------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A plain-dict form, as stored in bundle manifests."""
        return {
            "kind": "array_spec",
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "name": self.name,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> ArraySpec:
        """Rebuilds an ArraySpec or BoundedArraySpec from ``to_json()`` output."""
        if not isinstance(data, dict) or "kind" not in data:
            raise SpecError(f"expected a spec dict with a 'kind', got {data!r:.80}")
        kind = data["kind"]
        try:
            if kind == "array_spec":
                return ArraySpec(data["shape"], data["dtype"], data.get("name"))
            if kind == "bounded_array_spec":
                return BoundedArraySpec(
                    data["shape"],
                    data["dtype"],
                    minimum=_bound_from_json(data["minimum"]),
                    maximum=_bound_from_json(data["maximum"]),
                    name=data.get("name"),
                )
        except KeyError as e:
            raise SpecError(f"{kind}: missing field {e.args[0]!r}") from e
        raise SpecError(f"expected kind 'array_spec' or 'bounded_array_spec', got {kind!r}")


class BoundedArraySpec(ArraySpec):
    """An ArraySpec with inclusive bounds; missing bounds are the dtype's limits.

    Bounds are read-only arrays that broadcast to the shape.
    """

    __slots__ = ("_maximum", "_minimum")

    def __init__(
        self,
        shape: Sequence[int],
        dtype: Any,
        minimum: Any = None,
        maximum: Any = None,
        name: str | None = None,
    ):
        super().__init__(shape, dtype, name)
        label = f"spec {name!r}" if name else "spec"
        low, high = _dtype_limits(self.dtype)
        self._minimum = self._make_bound(low if minimum is None else minimum, "minimum", label)
        self._maximum = self._make_bound(high if maximum is None else maximum, "maximum", label)
        bad = np.broadcast_to(self._minimum > self._maximum, self.shape)
        if np.any(bad):
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            lo = np.broadcast_to(self._minimum, self.shape)[index]
            hi = np.broadcast_to(self._maximum, self.shape)[index]
            where = f" at index {index}" if index else ""
            raise SpecError(
                f"{label}: min has values greater than max: minimum {lo} is greater than "
                f"maximum {hi}{where}"
            )

    def _make_bound(self, value: Any, which: str, label: str) -> np.ndarray:
        raw = np.asarray(value)
        if raw.dtype.kind not in "biuf":
            raise SpecError(f"{label}: expected a numeric {which}, got {value!r}")
        try:
            np.broadcast_to(raw, self.shape)
        except ValueError as e:
            raise SpecError(
                f"{label}: {which} of shape {raw.shape} is not compatible with shape "
                f"{self.shape} (does not broadcast to it)"
            ) from e
        if raw.dtype.kind == "f" and np.any(np.isnan(raw)):
            raise SpecError(f"{label}: {which} is NaN")
        low, high = _dtype_limits(self.dtype)
        if self.dtype.kind in "biu":
            if raw.dtype.kind == "f" and (np.any(np.isinf(raw)) or np.any(raw != np.round(raw))):
                raise SpecError(
                    f"{label}: {which} {value!r} is not a whole number, "
                    f"as dtype {self.dtype.name} needs"
                )
            # Compare as Python ints: exact for every int64/uint64 bound.
            flat = [int(v) for v in raw.reshape(-1)]
            if any(v < int(low) or v > int(high) for v in flat):
                raise SpecError(
                    f"{label}: {which} {value!r} does not fit dtype {self.dtype.name} "
                    f"(range [{low}, {high}])"
                )
        elif np.any(np.isfinite(raw) & (np.abs(raw.astype(np.float64)) > float(high))):
            raise SpecError(
                f"{label}: {which} {value!r} does not fit dtype {self.dtype.name} "
                f"(largest finite value {high})"
            )
        bound = raw.astype(self.dtype)
        bound.setflags(write=False)
        return bound

    @property
    def minimum(self) -> np.ndarray:
        return self._minimum

    @property
    def maximum(self) -> np.ndarray:
        return self._maximum

    @property
    def num_values(self) -> np.ndarray | None:
        """For integer specs, how many values each element can take (maximum - minimum + 1);
        None for other specs, as in TF-Agents."""
        if self.dtype.kind not in "iu":
            return None
        return self._maximum.astype(np.int64) - self._minimum.astype(np.int64) + 1

    def __repr__(self) -> str:
        return (
            f"BoundedArraySpec(shape={self.shape}, dtype={self.dtype.name}, name={self.name!r}, "
            f"minimum={_short_bound(self.minimum)}, maximum={_short_bound(self.maximum)})"
        )

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (
            self._shape == other._shape
            and self._dtype == other._dtype
            and np.array_equal(
                np.broadcast_to(self._minimum, self.shape),
                np.broadcast_to(other._minimum, other.shape),
            )
            and np.array_equal(
                np.broadcast_to(self._maximum, self.shape),
                np.broadcast_to(other._maximum, other.shape),
            )
        )

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._shape, self._dtype))

    def __reduce__(self):
        return type(self), (self._shape, self._dtype, self._minimum, self._maximum, self._name)

    def replace(self, **kwargs: Any) -> BoundedArraySpec:
        args = {
            "shape": self.shape,
            "dtype": self.dtype,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "name": self.name,
        }
        unknown = set(kwargs) - set(args)
        if unknown:
            raise TypeError(f"replace() got unexpected arguments {sorted(unknown)}")
        if "dtype" in kwargs and not {"minimum", "maximum"} <= set(kwargs):
            # The old bounds may not fit the new dtype; keep those that do.
            new_dtype = _as_dtype(kwargs["dtype"])
            low, high = _dtype_limits(new_dtype)
            for which, limit in (("minimum", low), ("maximum", high)):
                if which not in kwargs and (
                    self.dtype.kind != new_dtype.kind or self.dtype.itemsize > new_dtype.itemsize
                ):
                    kwargs[which] = limit
        args.update(kwargs)
        return BoundedArraySpec(**args)

    def _check_bounds(self, array: np.ndarray, path: str) -> None:
        _check_in_bounds(array, self.minimum, self.maximum, path)

    def check_bounds(self, value: Any, path: str = "") -> None:
        """Raises SpecMismatchError when any element of ``value`` is out of bounds."""
        _check_in_bounds(np.asarray(value), self.minimum, self.maximum, path or (self.name or ""))

    def generate_value(self) -> np.ndarray:
        return np.broadcast_to(self.minimum, self.shape).astype(self.dtype)

    def sample(
        self, rng: np.random.Generator | int | None = None, outer_dims: Sequence[int] = ()
    ) -> np.ndarray:
        """A uniform random array within the bounds.

        Integer bounds are inclusive. Float bounds beyond +-FLOAT_SAMPLE_LIMIT (or
        infinite) are narrowed to it, so samples stay finite and moderate.
        """
        rng = as_rng(rng)
        shape = tuple(outer_dims) + self.shape
        low = np.broadcast_to(self.minimum, shape)
        high = np.broadcast_to(self.maximum, shape)
        if self.dtype.kind == "b":
            return rng.integers(
                low.astype(np.int8), high.astype(np.int8), endpoint=True, size=shape
            ).astype(np.bool_)
        if self.dtype.kind in "iu":
            work = np.uint64 if self.dtype == np.uint64 else np.int64
            return rng.integers(
                low.astype(work), high.astype(work), size=shape, endpoint=True
            ).astype(self.dtype)
        low64 = np.clip(low.astype(np.float64), -FLOAT_SAMPLE_LIMIT, FLOAT_SAMPLE_LIMIT)
        high64 = np.clip(high.astype(np.float64), -FLOAT_SAMPLE_LIMIT, FLOAT_SAMPLE_LIMIT)
        # A range wholly beyond the limit collapses to the limit; keep the true bound then.
        low64 = np.where(low64 > high64, low.astype(np.float64), low64)
        high64 = np.maximum(high64, low64)
        sample = rng.uniform(low64, high64, size=shape).astype(self.dtype)
        # Rounding to a narrower float can step just outside a bound.
        return np.clip(sample, low, high).astype(self.dtype)

    @classmethod
    def from_spec(cls, spec: Any, name: str | None = None) -> BoundedArraySpec:
        """A bounded spec from any spec (renamed ``name`` if given); unbounded ones get the
        dtype's limits."""
        minimum = getattr(spec, "minimum", None)
        maximum = getattr(spec, "maximum", None)
        if name is None:
            name = getattr(spec, "name", None)
        return cls(_spec_shape(spec), spec.dtype, minimum, maximum, name)

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data["kind"] = "bounded_array_spec"
        data["minimum"] = _bound_to_json(self.minimum)
        data["maximum"] = _bound_to_json(self.maximum)
        return data


# --- helpers ----------------------------------------------------------------------


def _dtype_limits(dtype: np.dtype) -> tuple[Any, Any]:
    if dtype.kind == "b":
        return 0, 1
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return int(info.min), int(info.max)
    info = np.finfo(dtype)
    return float(info.min), float(info.max)


def as_rng(rng: Any) -> np.random.Generator:
    """A Generator as given, one drawing from a RandomState's bit generator (TF-Agents
    passes RandomStates), or a new one seeded with ``rng`` (None: fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, np.random.RandomState):
        return np.random.Generator(rng._bit_generator)
    return np.random.default_rng(rng)


def _short_bound(bound: np.ndarray) -> str:
    if bound.ndim == 0:
        return repr(bound.item())
    flat = np.unique(bound)
    if flat.size == 1:
        return repr(flat.item())
    return np.array2string(bound, threshold=6, separator=", ")


def _check_in_bounds(array: np.ndarray, minimum: np.ndarray, maximum: np.ndarray, path: str):
    if array.dtype.kind not in "biuf":
        return
    low_bad = array < minimum
    high_bad = array > maximum
    if np.any(low_bad) or np.any(high_bad):
        bad = np.argwhere(np.broadcast_to(low_bad | high_bad, array.shape))[0]
        index = tuple(int(i) for i in bad)
        low = np.broadcast_to(minimum, array.shape)[index]
        high = np.broadcast_to(maximum, array.shape)[index]
        where = f" at index {index}" if index else ""
        raise SpecMismatchError(path, f"values in [{low}, {high}]", f"{array[index]}{where}")


def _as_numeric_array(value: Any, path: str) -> np.ndarray:
    """``np.asarray(value)``, or a SpecMismatchError for ragged or non-array values."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise SpecMismatchError(
            path,
            "an array (equal-length rows of numbers)",
            f"a ragged or non-numeric {type(value).__name__}",
        ) from e


def check_finite(array: np.ndarray, path: str) -> None:
    """Raises SpecMismatchError naming the first NaN or infinite element of a float array."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        where = f" at index {index}" if index else ""
        raise SpecMismatchError(path, "finite values", f"{array[index]}{where}")


def _safe_cast(array: np.ndarray, dtype: np.dtype, path: str) -> np.ndarray:
    src = array.dtype
    ok_kinds = {
        "b": "b",
        "i": "biu",
        "u": "biu",
        "f": "biuf",
    }
    if src.kind not in ok_kinds.get(dtype.kind, ""):
        raise SpecMismatchError(
            path, f"dtype {dtype.name}", src.name, detail="unsafe conversion refused"
        )
    if dtype.kind in "iu" and src.kind in "iu" and not np.can_cast(src, dtype):
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise SpecMismatchError(
                path,
                f"dtype {dtype.name}",
                src.name,
                detail=f"values outside [{info.min}, {info.max}]",
            )
    return array.astype(dtype)


def _bound_to_json(bound: np.ndarray) -> Any:
    def encode(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
        return x

    values = bound.tolist()  # Python ints/floats; float32 values survive the round trip.
    if isinstance(values, list):
        return nest.map_structure(encode, values)
    return encode(values)


def _bound_from_json(data: Any) -> Any:
    def decode(x: Any) -> Any:
        if isinstance(x, str):
            if x in ("inf", "-inf", "nan"):
                return float(x)
            raise SpecError(f"expected a number or 'inf'/'-inf' in a bound, got {x!r}")
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise SpecError(f"expected a number in a bound, got {x!r}")
        return x

    if isinstance(data, list):
        return np.asarray(nest.map_structure(decode, data))
    return decode(data)


# --- nests of specs -------------------------------------------------------------------


def _is_spec(x: Any) -> bool:
    return isinstance(x, ArraySpec) or (
        hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, np.ndarray)
    )


def sample_spec_nest(
    spec: Any, rng: np.random.Generator | int | None = None, outer_dims: Sequence[int] = ()
) -> Any:
    """Samples every spec in a nest with one Generator (reproducible for a seed)."""
    rng = as_rng(rng)
    return nest.map_structure(lambda s: as_array_spec(s).sample(rng, outer_dims), spec)


def zero_spec_nest(spec: Any, outer_dims: Sequence[int] = ()) -> Any:
    """Zeros for every spec in a nest."""
    return nest.map_structure(lambda s: as_array_spec(s).zeros(outer_dims), spec)


def as_array_spec(spec: Any) -> ArraySpec:
    """An array spec for one spec of any kind (tensor specs keep their bounds)."""
    if isinstance(spec, ArraySpec):
        return spec
    if getattr(spec, "minimum", None) is not None:
        return BoundedArraySpec.from_spec(spec)
    return ArraySpec.from_spec(spec)


def check_arrays_nest(arrays: Any, spec: Any) -> bool:
    """True when ``arrays`` has the structure of ``spec`` and every leaf checks exactly
    (False, not an error, for anything else, a leaf of ``spec`` that is no spec included)."""
    try:
        assert_arrays_spec_nest(arrays, spec)
    except (TypeError, ValueError):
        return False
    return True


def assert_arrays_spec_nest(arrays: Any, spec: Any) -> None:
    """Raises SpecMismatchError (a ValueError) naming the first leaf of ``arrays`` that does
    not match its spec, StructureError for a different structure, SpecTypeError for a leaf
    of ``spec`` that is no spec."""
    nest.assert_same_structure(arrays, spec)
    for (path, s), a in zip(
        nest.flatten_with_paths(spec), nest.flatten_up_to(spec, arrays), strict=True
    ):
        if not _is_spec(s):
            raise SpecTypeError(
                f"{path or 'spec'}: expected an array spec, got {type(s).__name__} {s!r:.40}"
            )
        as_array_spec(s).validate(a, path)


def add_outer_dims_nest(structure: Any, outer_dims: Sequence[int]) -> Any:
    """The same nest of array specs with ``outer_dims`` prepended to every shape."""

    def add(spec: Any) -> ArraySpec:
        spec = as_array_spec(spec)
        return spec.replace(shape=tuple(outer_dims) + spec.shape)

    return nest.map_structure(add, structure)


def is_bounded(spec: Any) -> bool:
    return isinstance(spec, BoundedArraySpec)


def is_discrete(spec: Any) -> bool:
    """True for integer specs (or dtypes); bool specs are neither discrete nor continuous."""
    return issubclass(np.dtype(_dtype_of(spec)).type, np.integer)


def is_continuous(spec: Any) -> bool:
    """True for floating-point specs (or dtypes)."""
    return issubclass(np.dtype(_dtype_of(spec)).type, np.floating)


def _dtype_of(spec: Any) -> Any:
    dtype = getattr(spec, "dtype", spec)
    return getattr(dtype, "as_numpy_dtype", dtype)


def sample_bounded_spec(spec: Any, rng: Any) -> np.ndarray:
    """A uniform sample of a bounded spec (bounds inclusive); ``rng`` a numpy Generator,
    RandomState or seed."""
    return BoundedArraySpec.from_spec(spec).sample(as_rng(rng))


def conform_nest(
    values: Any,
    spec: Any,
    path: str = "",
    outer_dims: tuple[int, ...] | None = None,
) -> tuple[Any, tuple[int, ...] | None]:
    """Checks a nest of values against a nest of specs, converting dtypes safely.

    All leaves must share the same outer (batch) dims; the first leaf sets them
    unless ``outer_dims`` is given.

    Returns:
      ``(conformed_values, outer_dims)``; outer_dims is None for an empty nest.

    Raises:
      StructureError / SpecMismatchError naming the path of the first bad leaf.
    """
    nest.assert_same_structure(values, spec, path)
    spec_leaves = nest.flatten_with_paths(spec, path)
    value_leaves = nest.flatten_up_to(spec, values)
    out = []
    for (leaf_path, s), v in zip(spec_leaves, value_leaves, strict=True):
        array, found = as_array_spec(s).conform(v, leaf_path, outer_dims)
        if outer_dims is None:
            outer_dims = found
        out.append(array)
    return nest.pack_sequence_as(spec, out), outer_dims


# --- JSON for nests -----------------------------------------------------------------

register_namedtuple = nest.register_namedtuple


def _encode_spec(spec: Any) -> dict[str, Any]:
    if not _is_spec(spec):
        raise SpecError(f"expected a spec or a nest of specs, got {type(spec).__name__}")
    return as_array_spec(spec).to_json()


def spec_nest_to_json(spec: Any) -> Any:
    """A JSON-able form of a nest of specs: dicts, tuples, lists and namedtuples kept."""
    return nest.to_json(spec, _encode_spec)


def _decode_spec(data: dict[str, Any]) -> ArraySpec:
    if data["kind"] not in ("array_spec", "bounded_array_spec"):
        raise SpecError(f"unknown spec kind {data['kind']!r}")
    return ArraySpec.from_json(data)


def spec_nest_from_json(data: Any) -> Any:
    """Inverse of spec_nest_to_json. Unknown namedtuple types become plain namedtuples."""
    return nest.from_json(data, _decode_spec)
