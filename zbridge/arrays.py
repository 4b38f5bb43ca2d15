"""numpy arrays inside a msgpack extension value, without importing numpy until needed.

Payload layout (the body of extension type ``EXT_NDARRAY``)::

    0  I (big-endian)  h: length of the header that follows
    4  msgpack header  [descr, shape, order]
       zero padding    so the data starts at a multiple of 16 within the payload
       raw data        the elements, ``order`` "C" (row-major) or "F" (column-major)

``descr`` is the .npy format's dtype description (``numpy.lib.format.dtype_to_descr``): a
string such as ``"<f8"`` (byte order kept), or a list of ``[name, descr(, shape)]`` for a
structured dtype. An F-contiguous array is sent in F order as it lies in memory; any other
non-C-contiguous array is made C-contiguous once. The receiver builds the array with
``numpy.frombuffer`` over the received bytes, so it is read-only (``arr.copy()`` to write).
Arrays of Python objects (and numpy 2 variable-width strings) have no bytes to send and
are refused.
"""

from __future__ import annotations

import struct
import sys
from math import prod
from typing import Any

import msgpack

_LENGTH = struct.Struct("!I")
ALIGN = 16
MAX_DIMS = 64


class ArrayDecodeError(ValueError):
    """An array payload that cannot be rebuilt here."""


def numpy_if_loaded() -> Any:
    """The numpy module if this process already imported it (no value can be an array otherwise)."""
    return sys.modules.get("numpy")


def pack(arr: Any) -> bytes:
    """The payload for ``arr`` (one copy of its data)."""
    import numpy as np
    dtype = arr.dtype
    _check_dtype(dtype)
    if arr.flags.c_contiguous:
        order, raw = "C", arr
    elif arr.flags.f_contiguous:
        order, raw = "F", arr.T  # the transpose of an F-contiguous array is C-contiguous
    else:
        order, raw = "C", np.ascontiguousarray(arr)
    header = msgpack.packb([np.lib.format.dtype_to_descr(dtype), list(arr.shape), order])
    start = _data_offset(len(header))
    return b"".join([_LENGTH.pack(len(header)), header, bytes(start - 4 - len(header)), raw])


def out_of_band(arr: Any) -> tuple[list[Any], Any]:
    """(header ``[descr, shape, order]``, the data as a flat uint8 array) for sending
    ``arr`` as its own frame: the array's own memory when it is C- or F-contiguous."""
    import numpy as np
    _check_dtype(arr.dtype)
    if arr.flags.c_contiguous:
        order, raw = "C", arr
    elif arr.flags.f_contiguous:
        order, raw = "F", arr.T
    else:
        order, raw = "C", np.ascontiguousarray(arr)
    header = [np.lib.format.dtype_to_descr(arr.dtype), list(arr.shape), order]
    return header, raw.reshape(-1).view(np.uint8)


def from_buffer(header: Any, buffer: Any) -> Any:
    """The array ``header`` describes, viewing ``buffer`` (a received frame) without a copy."""
    try:
        import numpy as np
    except ImportError:
        raise ArrayDecodeError("a numpy array arrived but numpy is not installed here: "
                               "pip install 'zbridge[arrays]'") from None
    descr, shape, order = _check_header(header)
    try:
        dtype = np.lib.format.descr_to_dtype(descr)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise ArrayDecodeError(f"array with an unknown dtype {descr!r}: {exc}") from None
    count = prod(shape)
    size = memoryview(buffer).nbytes
    if size != count * dtype.itemsize:
        raise ArrayDecodeError(f"array of shape {tuple(shape)} and dtype {dtype} needs "
                               f"{count * dtype.itemsize} bytes, got {size}")
    if dtype.itemsize == 0:
        return np.empty(shape, dtype)
    try:
        flat = np.frombuffer(memoryview(buffer).toreadonly(), dtype=dtype, count=count)
    except ValueError as exc:
        raise ArrayDecodeError(f"cannot rebuild an array of dtype {dtype}: {exc}") from None
    return flat.reshape(shape[::-1]).T if order == "F" else flat.reshape(shape)


def _check_dtype(dtype: Any) -> None:
    if dtype.hasobject or not getattr(type(dtype), "_legacy", True):
        raise TypeError(f"numpy arrays of dtype {dtype} hold Python objects, not bytes, and cannot "
                        "be sent: convert them (arr.tolist(), arr.astype(...)) or use "
                        "serializer='pickle' on a local bridge")


def _check_header(header: Any) -> tuple[Any, list[int], str]:
    if not (isinstance(header, list) and len(header) == 3 and isinstance(header[1], list)
            and header[2] in ("C", "F") and len(header[1]) <= MAX_DIMS
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in header[1])):
        raise ArrayDecodeError("array header must be [descr, shape, 'C'|'F'] with a shape of "
                               f"at most {MAX_DIMS} non-negative integers")
    return header[0], header[1], header[2]


def unpack(data: bytes) -> Any:
    """The array in a payload, viewing ``data`` (no copy)."""
    try:
        import numpy as np
    except ImportError:
        raise ArrayDecodeError("a numpy array arrived but numpy is not installed here: "
                               "pip install 'zbridge[arrays]'") from None
    descr, shape, order, start = _header(data)
    try:
        dtype = np.lib.format.descr_to_dtype(descr)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise ArrayDecodeError(f"array with an unknown dtype {descr!r}: {exc}") from None
    count = prod(shape)
    if len(data) - start != count * dtype.itemsize:
        raise ArrayDecodeError(f"array of shape {tuple(shape)} and dtype {dtype} needs "
                               f"{count * dtype.itemsize} bytes, got {len(data) - start}")
    if dtype.itemsize == 0:
        return np.empty(shape, dtype)
    try:
        flat = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    except ValueError as exc:  # e.g. an object dtype from a hostile sender
        raise ArrayDecodeError(f"cannot rebuild an array of dtype {dtype}: {exc}") from None
    return flat.reshape(shape[::-1]).T if order == "F" else flat.reshape(shape)


def _data_offset(header_length: int) -> int:
    return -(-(4 + header_length) // ALIGN) * ALIGN


def _header(data: bytes) -> tuple[Any, list[int], str, int]:
    if len(data) < 4:
        raise ArrayDecodeError("array payload shorter than its length prefix")
    (length,) = _LENGTH.unpack_from(data)
    if 4 + length > len(data):
        raise ArrayDecodeError("array header longer than its payload")
    try:
        header = msgpack.unpackb(data[4:4 + length], raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ArrayDecodeError(f"undecodable array header: {exc}") from None
    return (*_check_header(header), _data_offset(length))
