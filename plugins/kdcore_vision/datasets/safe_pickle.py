"""Reading a pickle that holds only data (dicts, lists, strings, numbers, numpy arrays) without
letting it run code, with every failure reported as one line naming the file.

Pickle is a small program: its ``GLOBAL`` / ``STACK_GLOBAL`` / ``INST`` / ``OBJ`` instructions
import any function or class by name and its ``REDUCE`` instruction calls it, so
``pickle.load`` on a crafted file runs ``os.system``, ``builtins.exec`` or anything else it
names. :func:`load` reads with an unpickler whose ``find_class`` (the only way the C unpickler
resolves a name) returns the objects of :data:`ALLOWED` and refuses every other name before
anything is imported; it also refuses persistent ids. Without globals a pickle can build only
inert values: dicts, lists, tuples, sets, str, bytes, bytearray, int, float, bool and None.

:data:`ALLOWED` is what numpy arrays of plain dtypes need, as each numpy and pickle protocol
writes them, and nothing else (see its comments). The allowed callables themselves run no code
from the file: ``_reconstruct`` makes an empty array of class ``ndarray`` (the only class
admitted), ``ndarray`` and ``dtype`` build arrays and dtypes from data, and ``_frombuffer`` and
``_codecs.encode`` are replaced by callables that check their arguments (an array from bytes; a
str to bytes through latin-1). None of them can be altered by the file: a pickle's ``BUILD``
instruction sets attributes of what it built, which for a Python function such as numpy's
``_frombuffer`` would change it for the whole process (its ``__defaults__``, say); builtins,
types and the instances of :class:`_Admitted` have no attributes it can set.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from kdcore.errors import KdcoreError


def _numpy_core(submodule: str):
    """``numpy._core.<submodule>`` (numpy >= 2), else ``numpy.core.<submodule>`` (numpy 1.x)."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


class _Admitted:
    """A callable a file may name: without ``__dict__`` or ``__setstate__``, so that the file's
    ``BUILD`` instructions cannot change it."""

    __slots__ = ()


class _Latin1Bytes(_Admitted):
    """Python 3 pickles ``bytes`` at protocols 0-2 as ``_codecs.encode(str, "latin1")``; that is
    the only call admitted (another codec could do more than copy characters to bytes)."""

    __slots__ = ()

    def __call__(self, text: Any, encoding: Any) -> bytes:
        if type(text) is not str or encoding != "latin1":
            raise _Refused("_codecs.encode with arguments other than (str, 'latin1')")
        return text.encode("latin1")


class _FromBuffer(_Admitted):
    """numpy's ``_frombuffer(buffer, dtype, shape, order, axis_order=None)``, with which protocol 5
    pickles an array: the array's bytes viewed as ``dtype`` and reshaped (``order`` ``"K"``:
    C order, then the axes permuted by ``axis_order``, as numpy >= 2 writes non-contiguous
    arrays)."""

    __slots__ = ()

    def __call__(self, buffer: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> np.ndarray:
        def ints(value: Any) -> bool:
            return type(value) is tuple and all(type(item) is int for item in value)

        if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or not ints(shape) \
                or order not in ("C", "F", "K") or not (axis_order is None or ints(axis_order)):
            raise _Refused("_frombuffer with arguments other than (bytes, dtype, shape, order)")
        array = np.frombuffer(buffer, dtype=dtype)
        if order == "K" and axis_order is not None:
            return array.reshape(shape, order="C").transpose(axis_order)
        return array.reshape(shape, order="C" if order == "K" else order)


_multiarray = _numpy_core("multiarray")

ALLOWED: dict[tuple[str, str], Any] = {
    # Protocols 0-4 write an array as _reconstruct(ndarray, (0,), b"b") followed by its state
    # (shape, dtype, order, raw bytes). numpy 1.x names the function numpy.core.multiarray (the
    # official CIFAR files: Python 2, protocol 2); numpy >= 2 names it numpy._core.multiarray.
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    # the array class passed to _reconstruct, and the dtype in the array's state (every version)
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Protocol 5 (Python >= 3.8) writes an array as _frombuffer(bytes, dtype, shape, order):
    # numpy.core.numeric in numpy 1.16-1.26, numpy._core.numeric in numpy >= 2.
    ("numpy.core.numeric", "_frombuffer"): _FromBuffer(),
    ("numpy._core.numeric", "_frombuffer"): _FromBuffer(),
    # Python 3 at protocols 0-2 writes bytes (a dict's keys, an array's raw data) this way.
    ("_codecs", "encode"): _Latin1Bytes(),
}
"""Every global a data pickle may name, and the object it gets."""


class _Refused(Exception):
    """Raised inside the unpickler to stop at a name that is not admitted."""


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise _Refused(f"{printable(module)}.{printable(name)}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("a persistent id")


def load(path: Path, fix: str, encoding: str = "bytes") -> Any:
    """The object pickled in ``path``, built only from inert values and :data:`ALLOWED`.

    Any problem raises :class:`KdcoreError` with one line, ``"<path>: <what is wrong>; <fix>"``:
    an unreadable, empty or truncated file, one that is not a pickle, or one that names a global
    outside :data:`ALLOWED` (nothing of the file is run in that case). ``encoding`` is
    :func:`pickle.load`'s, for strings written by Python 2 (``"bytes"`` keeps them as bytes).
    """
    try:
        size = path.stat().st_size
        file = open(path, "rb")
    except OSError as error:
        raise KdcoreError(f"{path}: cannot be read ({error.strerror or error}); {fix}") from None
    with file:
        if size == 0:
            raise KdcoreError(f"{path}: the file is empty (0 bytes), as left by an interrupted "
                              f"download or extraction; {fix}")
        try:
            return _DataUnpickler(file, encoding=encoding).load()
        except _Refused as refused:
            raise KdcoreError(
                f"{path}: refused to unpickle {refused} (a data file may hold only dicts, lists, "
                f"strings, numbers and numpy arrays; loading this name could run code, so "
                f"nothing of the file was run); {fix}"
            ) from None
        except Exception as error:  # a malformed stream can fail in many ways, each is this file's fault
            raise KdcoreError(f"{path}: {_what_is_wrong(error, path, size)}; {fix}") from None


def _what_is_wrong(error: Exception, path: Path, size: int) -> str:
    message = str(error)
    if isinstance(error, EOFError) or "truncated" in message:
        return (f"the pickle ends early after {size} bytes (the file is truncated, as left by an "
                f"interrupted download or extraction)")
    with open(path, "rb") as file:
        start = file.read(8)
    if not start.startswith(pickle.PROTO):  # how every pickle of protocol 2 or later starts
        return f"not a Python pickle (it starts with {start!r})"
    return f"not a valid pickle ({type(error).__name__}: {printable(message)})"


def printable(text: Any, limit: int = 120) -> str:
    """``text`` on one line of printable ASCII, at most ``limit`` characters."""
    shown = str(text).encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else shown[:limit] + "..."
