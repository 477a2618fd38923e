"""Recorded states: an ``.npz`` read with every declared shape and dtype checked first.

A states file is untrusted input. ``numpy.load`` allocates what an array's header
declares before it reads the data, so a 1.5 MB ``.npz`` declaring 10^8 x 4 floats
costs gigabytes. ``Npz`` reads the zip's directory and each member's ``.npy``
header (its length bounded before it is read), refuses what is not an array of
numbers or exceeds ``MAX_ROWS`` / ``MAX_BYTES``, and reads an array's data only when
asked, exactly as many bytes as its checked header declares. Nothing is unpickled.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import math
import os
import struct
import zipfile
import zlib
from typing import Any

import numpy as np

from toolkit.errors import ExportError

__all__ = ["MAX_BYTES", "MAX_ROWS", "Declared", "Npz"]

#: Most states (rows) a recorded array may declare.
MAX_ROWS = 1_000_000
#: Most bytes all the recorded arrays together may declare.
MAX_BYTES = 512 * 2**20
#: Most members an .npz may hold (a states file has a few arrays).
MAX_MEMBERS = 1024
#: Longest .npy header read (numpy's own limit for untrusted files).
MAX_HEADER = 10_000

_MAGIC = b"\x93NUMPY"
#: .npy format version -> (struct format of the header length, header encoding).
_VERSIONS = {(1, 0): ("<H", "latin1"), (2, 0): ("<I", "latin1"), (3, 0): ("<I", "utf8")}
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,  # a compression method zipfile does not know
    RuntimeError,  # an encrypted member
    OSError,
)
_EXPECTED = "expected an .npz of arrays (numpy.savez)"


@dataclasses.dataclass(frozen=True)
class Declared:
    """What a member's ``.npy`` header declares (nothing of its data read yet)."""

    key: str
    member: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class Npz:
    """An ``.npz`` opened for reading: its arrays as declared, read one by one.

    Attributes:
      arrays: ``{key: Declared}``; a key is the member name without ``.npy``, as
        ``numpy.load`` names them (``observation``, ``observation/pos``).

    Raises:
      ExportError: naming the file (and the array), what was expected and what came.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = path
        try:
            with open(path, "rb") as f:
                start = f.read(len(_MAGIC))
        except OSError as e:
            raise ExportError(f"{path}: {_EXPECTED}, could not read it ({e.strerror})") from None
        if start == _MAGIC:
            raise ExportError(
                f"{path}: {_EXPECTED}, got a single .npy array; save the states with "
                "numpy.savez(path, observation=array)"
            )
        try:
            self._zip = zipfile.ZipFile(path)
        except _ZIP_ERRORS as e:
            raise ExportError(
                f"{path}: {_EXPECTED}, got a file that is not a zip archive ({e})"
            ) from None
        try:
            self.arrays = self._declared()
        except BaseException:
            self._zip.close()
            raise

    def _declared(self) -> dict[str, Declared]:
        infos = self._zip.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ExportError(
                f"{self.path}: expected at most {MAX_MEMBERS} arrays, got {len(infos)} members"
            )
        arrays: dict[str, Declared] = {}
        total = 0
        for info in infos:
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise ExportError(
                    f"{self.path}: {_EXPECTED}, got a member {info.filename!r} that is not .npy"
                )
            key = info.filename[: -len(".npy")]
            if key in arrays:
                raise ExportError(f"{self.path}: {key}: expected one array, got two of that name")
            declared = self._header(key, info)
            if not declared.shape:
                raise ExportError(
                    f"{self.path}: {key}: expected one row per state, got a scalar (shape ())"
                )
            if declared.shape[0] > MAX_ROWS:
                raise ExportError(
                    f"{self.path}: {key}: expected at most {MAX_ROWS:,} rows (states), got "
                    f"{declared.shape[0]:,} (shape {declared.shape})"
                )
            total += declared.nbytes
            if total > MAX_BYTES:
                raise ExportError(
                    f"{self.path}: expected arrays of at most {MAX_BYTES // 2**20} MiB in all, "
                    f"got {total / 2**20:,.0f} MiB declared by the arrays up to {key!r} "
                    f"({key}: shape {declared.shape}, {declared.dtype})"
                )
            arrays[key] = declared
        return arrays

    def _header(self, key: str, info: zipfile.ZipInfo) -> Declared:
        where = f"{self.path}: {key}"
        try:
            with self._zip.open(info) as f:
                start = f.read(len(_MAGIC) + 2)
                version = tuple(start[len(_MAGIC) :])
                if start[: len(_MAGIC)] != _MAGIC or version not in _VERSIONS:
                    raise ExportError(f"{where}: expected a .npy array, got other data")
                length_format, encoding = _VERSIONS[version]
                size = f.read(struct.calcsize(length_format))
                if len(size) != struct.calcsize(length_format):
                    raise ExportError(f"{where}: expected a .npy header, got a truncated one")
                (length,) = struct.unpack(length_format, size)
                if length > MAX_HEADER:
                    raise ExportError(
                        f"{where}: expected a .npy header of at most {MAX_HEADER} bytes, "
                        f"got {length}"
                    )
                text = f.read(length)
        except _ZIP_ERRORS as e:
            raise ExportError(f"{where}: could not read the array's header ({e})") from None
        if len(text) != length:
            raise ExportError(f"{where}: expected a .npy header, got a truncated one")
        try:
            header = ast.literal_eval(text.decode(encoding))
        except (ValueError, SyntaxError, RecursionError, MemoryError, UnicodeDecodeError):
            header = None
        if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
            raise ExportError(f"{where}: expected a .npy header, got {text[:80]!r}")
        shape, fortran = header["shape"], header["fortran_order"]
        if (
            not isinstance(shape, tuple)
            or not all(type(d) is int and d >= 0 for d in shape)
            or not isinstance(fortran, bool)
        ):
            raise ExportError(f"{where}: expected a .npy header, got {text[:80]!r}")
        dtype = _dtype(header["descr"])
        if dtype is None:
            raise ExportError(
                f"{where}: expected numbers (bool, int or float), got dtype {header['descr']!r}"
            )
        return Declared(key, info.filename, shape, dtype, fortran)

    def read(self, key: str) -> np.ndarray:
        """The array ``key``: exactly the bytes its (checked) header declares."""
        declared = self.arrays[key]
        where = f"{self.path}: {key}"
        buffer = bytearray(declared.nbytes)
        got = 0
        try:
            with self._zip.open(declared.member) as f:
                _skip_header(f)
                view = memoryview(buffer)
                while got < len(buffer):
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
        except _ZIP_ERRORS as e:
            raise ExportError(f"{where}: could not read the array's data ({e})") from None
        if got != len(buffer):
            raise ExportError(
                f"{where}: expected {len(buffer)} bytes of data (shape {declared.shape}, "
                f"{declared.dtype}), got {got}"
            )
        array = np.frombuffer(buffer, declared.dtype)
        return array.reshape(declared.shape, order="F" if declared.fortran else "C")

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> Npz:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _skip_header(f: io.BufferedIOBase) -> None:
    """Moves past a member's .npy header (already checked by ``Npz._header``)."""
    start = f.read(len(_MAGIC) + 2)
    length_format, _ = _VERSIONS[tuple(start[len(_MAGIC) :])]
    (length,) = struct.unpack(length_format, f.read(struct.calcsize(length_format)))
    f.read(length)


def _dtype(descr: Any) -> np.dtype | None:
    """The dtype of a plain numeric descriptor ('<f4', '|b1'...), else None."""
    if not isinstance(descr, str) or len(descr) > 16:
        return None
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError):
        return None
    return dtype if dtype.kind in "biuf" and not dtype.hasobject else None
