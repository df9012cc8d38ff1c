"""Input validation at the public boundary (scikit-learn's ``check_array`` habit).

Everything the C core receives passes through here: dtypes, layout, shapes,
finiteness, labels and option names. Messages say what was received.
"""
from __future__ import annotations

import contextlib
import numbers
import os
import warnings
import threading
from typing import Any, Iterable, Sequence

import numpy as np

_FLOATS = (np.float32, np.float64)
# Larger entries overflow the computation (float32 activations, float64 variances
# and the cubes of the text objective) and would give a wrong score silently.
MAX_ABS = 1e30


def _from_torch(x: Any, name: str) -> Any:
    """CPU torch tensors become NumPy views (zero-copy); others are copied to the CPU."""
    mod = type(x).__module__ or ""
    if mod.startswith("torch") and hasattr(x, "detach"):
        t = x.detach()
        if getattr(t, "is_cuda", False) or str(getattr(t, "device", "cpu")) != "cpu":
            t = t.cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    return x


def as_float_matrix(x: Any, name: str, *, dtype: Any = None, check_finite: bool = True,
                    allow_empty: bool = False, row_strided_ok: bool = True,
                    max_abs: "float | None" = MAX_ABS) -> np.ndarray:
    """Return ``x`` as a 2-D float32/float64 array whose rows are contiguous.

    No copy is made when ``x`` already is such an array (NumPy array, memmap or
    CPU tensor view) of the requested dtype; otherwise one copy is made. The
    input is never written to. With ``check_finite``, NaN/Inf and entries larger
    than ``max_abs`` in magnitude are rejected.
    """
    x = _from_torch(x, name)
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a 2-D array of floats, got {type(x).__name__}")
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} could not be converted to an array: {exc}") from None
    if x.dtype.kind == "f" and x.dtype.itemsize == 2:
        x = x.astype(np.float32)
    if x.dtype.kind != "f" or x.dtype.type not in _FLOATS:
        hint = " (convert with .astype(np.float32))" if x.dtype.kind in "iub" else ""
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype}{hint}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {x.shape}")
    if not allow_empty and (x.shape[0] == 0 or x.shape[1] == 0):
        raise ValueError(f"{name} is empty: shape {x.shape}")
    want = np.dtype(dtype) if dtype is not None else x.dtype.newbyteorder("=")
    if x.dtype != want:
        x = x.astype(want)  # also fixes a non-native byte order
    isz = x.itemsize
    rows_ok = (x.shape[1] <= 1 or x.strides[1] == isz) and x.strides[0] >= 0 and (
        x.shape[0] <= 1 or (x.strides[0] % isz == 0 and x.strides[0] >= x.shape[1] * isz))
    if not x.flags.aligned:  # ascontiguousarray would keep an unaligned C-contiguous array as is
        x = np.array(x, order="C", copy=True)
    elif not (x.flags.c_contiguous or (row_strided_ok and rows_ok)):
        x = np.ascontiguousarray(x)
    if check_finite:
        check_finite_rows(x, name, max_abs=max_abs)
    return x


def check_finite_rows(x: np.ndarray, name: str, block: int = 8192,
                      max_abs: "float | None" = MAX_ABS) -> None:
    """Raise ValueError naming the first row with NaN/Inf, or with an entry above
    ``max_abs`` in magnitude (block-wise max/min, no temporaries on the clean path)."""
    for r0 in range(0, x.shape[0], block):
        part = x[r0:r0 + block]
        if part.size == 0:
            continue
        hi, lo = part.max(), part.min()  # NaN propagates through max/min
        if not (np.isfinite(hi) and np.isfinite(lo)):
            bad = np.flatnonzero(~np.isfinite(part).all(axis=1))[0] + r0
            raise ValueError(f"{name} contains NaN or Inf (first in row {bad})")
        if max_abs is not None and max(float(hi), -float(lo)) > max_abs:
            bad = np.flatnonzero(np.abs(part).max(axis=1) > max_abs)[0] + r0
            raise ValueError(f"{name} has entries as large as {max(float(hi), -float(lo)):.3g} (first in "
                             f"row {bad}); magnitudes above {max_abs:.0e} overflow the computation, "
                             "rescale the array")


def encode_labels(train: Any, evals: Sequence[Any] = (), names: Sequence[str] = (), stacklevel: int = 4) -> tuple:
    """Map class labels to codes 0..K-1, the classes being the sorted unique train labels.

    Returns ``(classes, y_train, [y_eval, ...])`` with int32 codes; an eval label
    that is not a train class gets -1 (see :func:`match_labels`).
    """
    y = _labels_1d(train, "train_labels")
    try:
        classes, y_tr = np.unique(y, return_inverse=True)
    except TypeError as exc:
        raise TypeError(f"train_labels mix types that cannot be ordered: {exc}") from None
    out = []
    for lab, nm in zip(evals, names):
        out.append(match_labels(classes, lab, nm, stacklevel=stacklevel))
    return classes, y_tr.astype(np.int32).reshape(-1), out


def match_labels(classes: np.ndarray, labels: Any, name: str, known: str = "train_labels",
                 stacklevel: int = 3) -> np.ndarray:
    """Codes (int32) of ``labels`` in the sorted unique ``classes``; -1 for a label not among them.

    Labels are compared by value, never cast to the dtype of ``classes``: a longer
    string or a larger integer is not truncated or wrapped onto a class. Labels of
    the same kind (two integer, two string dtypes...) are compared in the wider
    dtype; others as Python values (``1 == 1.0 == True``, ``"1" != 1``, ``b"a" != "a"``).
    Labels that are not classes can never be predicted: they count as errors,
    with a UserWarning naming them; a ValueError when no label is a class (the
    two label sets do not match at all).
    """
    e = _labels_1d(labels, name)
    if e.dtype.kind == classes.dtype.kind and e.dtype.kind in "biufSUmM":
        t = np.result_type(classes.dtype, e.dtype)  # same kind: a widening, exact
        c = classes.astype(t, copy=False)
        pos = np.minimum(np.searchsorted(c, e.astype(t, copy=False)), len(c) - 1)
        codes = np.where(c[pos] == e, pos, -1)
    else:
        index = {v: i for i, v in enumerate(classes.tolist())}
        try:
            codes = np.fromiter((index.get(v, -1) for v in e.tolist()), np.int64, e.shape[0])
        except TypeError as exc:  # unhashable values
            raise TypeError(f"{name} cannot be compared with {known}: {exc}") from None
    unseen = codes < 0
    if unseen.all():
        raise ValueError(f"none of the {name} ({e[:3].tolist()}...) is a class of {known} "
                         f"({classes[:5].tolist()}...): the labels of the two splits do not match")
    if unseen.any():
        which = list(dict.fromkeys(e[unseen].tolist()))
        warnings.warn(f"{int(unseen.sum())} of {e.shape[0]} {name} (classes {which[:5]}"
                      f"{'...' if len(which) > 5 else ''}) are not among the classes of {known}: they can "
                      "never be predicted and count as errors", UserWarning, stacklevel=stacklevel)
    return codes.astype(np.int32)


def _labels_1d(lab: Any, name: str) -> np.ndarray:
    """1-D array of class labels: refuses None, NaN, complex numbers, strings mixed with
    numbers, and floats with a fractional part (continuous targets, as scikit-learn)."""
    lab = _from_torch(lab, name)
    if lab is None or isinstance(lab, (str, bytes)):
        raise TypeError(f"{name} must be a 1-D array of labels, got {type(lab).__name__}")
    try:
        a = np.asarray(lab)
    except ValueError as exc:  # ragged lists
        raise TypeError(f"{name} could not be converted to an array: {exc}") from None
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if a.dtype.kind == "c":
        raise TypeError(f"{name} must not be complex")
    if a.dtype.kind in "US" and not isinstance(lab, np.ndarray):
        _check_objects(np.asarray(lab, dtype=object), name)  # NumPy turns ["a", 1] into ["a", "1"]
    if a.dtype.kind == "O":
        _check_objects(a, name)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contain NaN or Inf")
        frac = a != np.floor(a)
        if np.any(frac):
            _continuous(name, a[frac][0])
    return a


def _check_objects(a: np.ndarray, name: str) -> None:
    vals = a.tolist()
    if any(v is None for v in vals):
        raise ValueError(f"{name} contain None")
    for v in vals:
        if isinstance(v, (float, np.floating)):
            if not np.isfinite(v):
                raise ValueError(f"{name} contain NaN or Inf")  # NaN breaks the sorted class list
            if not float(v).is_integer():
                _continuous(name, v)
    strings = sum(isinstance(v, (str, bytes)) for v in vals)
    if 0 < strings < len(vals):
        raise TypeError(f"{name} mix strings and numbers; use one type of label")


def _continuous(name: str, value: Any) -> None:
    raise ValueError(f"{name} look continuous ({value!r} has a fractional part): IIS needs class "
                     "labels (integers, strings, or integral floats)")


def check_option(value: Any, name: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")
    return value


def meant_float(v: Any) -> Any:
    """A float32/float16 scalar as the decimal it was written as (its shortest repr, e.g.
    ``np.float32(0.7)`` -> 0.7, not 0.699999988): ``M * s`` then floors to the intended k."""
    if isinstance(v, np.floating) and v.dtype.itemsize < 8:
        return float(str(v))
    return v


def check_sparsities(s: Any) -> np.ndarray:
    try:
        if isinstance(s, np.ndarray) and s.dtype.kind == "f" and s.dtype.itemsize < 8:
            s = [meant_float(v) for v in s.reshape(-1)]
        elif isinstance(s, (list, tuple)):
            s = [meant_float(v) for v in s]
        a = np.asarray(s, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise TypeError(f"sparsities must be a sequence of numbers, got {s!r}") from None
    if a.size < 2:
        raise ValueError(f"sparsities needs at least 2 ratios to integrate ARR, got {a.size}")
    if not np.all(np.isfinite(a)) or np.any(a < 0) or np.any(a >= 1):
        raise ValueError(f"sparsities must lie in [0, 1), got {a.tolist()}")
    a = np.unique(a)
    if a.size < 2:
        raise ValueError("sparsities needs at least 2 distinct ratios")
    return a


def check_positive(value: Any, name: str, *, strict: bool = True, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if integer and not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not np.isfinite(value) or (value <= 0 if strict else value < 0):
        raise ValueError(f"{name} must be {'> 0' if strict else '>= 0'} and finite, got {value!r}")
    return value


def check_threads(n_threads: Any) -> int:
    """scikit-learn semantics: None -> all cores (0 for the core), negative counts back."""
    if n_threads is None:
        return 0
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral) or n_threads == 0:
        raise ValueError(f"n_threads must be None or a non-zero integer, got {n_threads!r}")
    # the core takes a C int (and clamps large counts); -2**30 still means "one thread"
    return int(max(-2**30, min(int(n_threads), 2**30)))


_BLAS_LOCK = threading.Lock()
_BLAS_STATE: dict = {"controller": None, "depth": 0, "saved": None}


@contextlib.contextmanager
def blas_limit(limit: "int | None"):
    """Context in which BLAS runs on ``limit`` threads (None: left as it is).

    Process-wide and reference-counted: the first context to enter (from any
    thread) records the BLAS thread counts and the last one to leave restores
    them, so contexts that overlap across threads and leave out of order
    (threadpoolctl's own limiters restore what they saw on entry) still leave
    the process as it was. While several overlap, the latest limit holds.
    One threadpoolctl controller is kept (building one scans the loaded
    libraries, about 1 ms: most of a small ``iis.score``).
    """
    st = _BLAS_STATE
    with _BLAS_LOCK:
        if st["controller"] is None:
            from threadpoolctl import ThreadpoolController

            st["controller"] = ThreadpoolController()
        if limit is not None:
            with _blas_control():
                limiter = st["controller"].limit(limits=int(limit), user_api="blas")
            if st["saved"] is None:
                st["saved"] = limiter  # holds the counts from before the first limit
        st["depth"] += 1
    try:
        yield
    finally:
        with _BLAS_LOCK:
            st["depth"] -= 1
            if st["depth"] == 0 and st["saved"] is not None:
                with _blas_control():
                    st["saved"].restore_original_limits()
                st["saved"] = None


@contextlib.contextmanager
def _blas_control():
    """Let this thread set OpenBLAS' process-wide count, then release it: threadpoolctl
    >= 3.8 silently ignores the calls of any thread but the first one to set it."""
    from threadpoolctl import OpenBLASController

    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)
    try:
        yield
    finally:
        if clear is not None:
            clear(force=True)


def single_blas():
    """Context in which BLAS runs on one thread: the C kernels split their GEMMs
    over OpenMP threads themselves (one thread pool, no oversubscription)."""
    return blas_limit(1)


def blas_threads(n_threads: int) -> int | None:
    """Thread count for threadpoolctl matching ``check_threads``' code."""
    import os

    total = os.cpu_count() or 1
    if n_threads == 0:
        return None
    if n_threads > 0:
        return min(n_threads, 4 * total)  # as the core clamps its OpenMP threads
    return max(1, total + 1 + n_threads)


def stratified_choice(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` indices spread evenly across classes (round-robin over the classes,
    random within each class, seeded). Sorted ascending."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if n > labels.shape[0]:
        raise ValueError(f"asked for {n} elements but only {labels.shape[0]} are available")
    classes, inv = np.unique(labels, return_inverse=True)
    pools = [rng.permutation(np.flatnonzero(inv == c)) for c in range(len(classes))]
    order = rng.permutation(len(classes))
    take, depth = [], 0
    while len(take) < n:
        for c in order:
            if depth < len(pools[c]):
                take.append(pools[c][depth])
                if len(take) == n:
                    break
        depth += 1
    return np.sort(np.asarray(take, dtype=np.int64))


def json_text(data: Any, path: "str | None" = None, indent: int = 2) -> str:
    """``json.dumps(data)`` with NaN and infinities written as ``null`` (valid JSON);
    also written to ``path`` (with a final newline) when given. The one writer behind
    every ``to_json`` method."""
    import json

    text = json.dumps(_finite_or_none(data), indent=indent, allow_nan=False)
    if path is not None:
        with open(path, "w") as fh:
            fh.write(text + "\n")
    return text


def printable(text: object) -> str:
    """``str(text)`` with control characters escaped: names read from files never reach
    a terminal as escape sequences."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float):
        return v if np.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite_or_none(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_or_none(x) for x in v]
    return v


class _Refused(ValueError):
    """A file refused by the readers below (its message is already complete)."""


# deflate expands at most about 1032-fold: a member claiming more is forged (a zip bomb)
_MAX_DEFLATE_RATIO = 1040


def _open_regular(path: Any, what: str, suffix: str = "") -> tuple:
    """(binary file, display name, whether we opened it) for a path or a file object.

    Paths must name regular files: devices (``/dev/zero``), FIFOs and sockets are
    refused before anything is read (a FIFO is opened non-blocking, then checked).
    A missing ``x`` is read as ``x`` + ``suffix`` when that exists (``save("x")``
    writes ``x.npz``)."""
    import os
    import stat

    if hasattr(path, "read") and hasattr(path, "seek"):
        return path, getattr(path, "name", "<file object>"), False
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"{what} file must be a path or a binary file object, got {type(path).__name__}")
    name = os.fsdecode(os.fspath(path))
    if suffix and not name.endswith(suffix) and not os.path.exists(name) and os.path.exists(name + suffix):
        name += suffix
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file {name!r} does not exist (No such file or directory)") from None
    except IsADirectoryError:
        raise _Refused(f"{what} file {name!r}: Is a directory") from None
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise _Refused(f"{what} file {name!r}: Is a directory")
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _Refused(f"{what} file {name!r} is not a regular file (a device, FIFO or socket); "
                       "iis reads regular files only")
    return os.fdopen(fd, "rb"), name, True


def _read_array(fh: Any, size: int, label: str) -> np.ndarray:
    """The array of a ``.npy`` stream of ``size`` bytes, without pickles; the header is
    checked against ``size`` before anything is allocated (a forged shape asking for
    terabytes is refused here, not by a MemoryError)."""
    from numpy.lib import format as fmt

    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(fh)
    else:  # 3.0: utf-8 field names; the same checks
        shape, fortran, dtype = fmt._read_array_header(fh, version)
    if dtype.hasobject:
        raise _Refused(f"{label} holds object arrays (they would need pickles); save plain numeric arrays")
    if dtype.itemsize == 0:
        raise _Refused(f"{label} has a zero-size dtype {dtype}")
    count = 1
    for n in shape:
        count *= int(n)
    want, have = count * dtype.itemsize, size - fh.tell()
    if want != have:
        raise _Refused(f"{label} declares shape {tuple(shape)} of {dtype} ({want:,} bytes) but holds "
                       f"{have:,} bytes: damaged or forged")
    buf = bytearray(want)
    got = fh.readinto(buf) if want else 0
    if got != want:
        raise _Refused(f"{label} is truncated ({got:,} of {want:,} bytes)")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _read_errors(what: str, name: str, exc: BaseException) -> Exception:
    """One clear exception for whatever a damaged file raised inside zipfile/NumPy."""
    if isinstance(exc, (_Refused, FileNotFoundError)):
        return exc
    if isinstance(exc, MemoryError):
        return MemoryError(f"{what} file {name!r}: not enough memory to read it")
    import zipfile

    if isinstance(exc, zipfile.BadZipFile):
        return ValueError(f"{what} file {name!r} is not an .npz archive (not a readable .npz: corrupt or "
                          f"truncated, or another format: {exc})")
    return ValueError(f"{what} file {name!r} is corrupt or truncated ({type(exc).__name__}: {exc})")


def npz_names(path: Any, what: str) -> list:
    """The array names in an ``.npz`` (nothing is decompressed)."""
    import zipfile

    fh, name, own = _open_regular(path, what, ".npz")
    try:
        with zipfile.ZipFile(fh) as zf:
            return [i.filename[:-4] for i in zf.infolist() if i.filename.endswith(".npy")]
    except Exception as exc:
        raise _read_errors(what, name, exc) from None
    finally:
        if own:
            fh.close()


def read_npz(path: Any, what: str, members: "Sequence[str] | None" = None) -> dict:
    """Arrays of an ``.npz`` file (or binary file object) as a dict, read without pickles.

    Only ``members`` are decompressed (all when None; names that are absent are
    left out of the dict). Raises FileNotFoundError for a missing file, and
    ValueError naming ``what`` (and the member) for anything else: not a regular
    file, not a zip archive, truncated or bit-flipped data, object arrays, or a
    member whose ``.npy`` header disagrees with its stored size.
    """
    import zipfile

    fh, name, own = _open_regular(path, what, ".npz")
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
            out = {}
            for key in (list(infos) if members is None else [k for k in members if k in infos]):
                info = infos[key]
                label = f"{what} file {name!r}: member {key!r}"
                stored = info.compress_type == zipfile.ZIP_STORED
                if (stored and info.compress_size != info.file_size) or \
                        info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
                    raise _Refused(f"{label} claims {info.file_size:,} bytes from {info.compress_size:,} "
                                   "stored: damaged or forged")
                try:
                    with zf.open(info) as member:
                        out[key] = _read_array(member, info.file_size, label)
                except (_Refused, MemoryError):
                    raise
                except Exception as exc:
                    raise _Refused(f"{label} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
            return out
    except Exception as exc:
        raise _read_errors(what, name, exc) from None
    finally:
        if own:
            fh.close()


def read_npy(path: Any, what: str) -> np.ndarray:
    """The array of a ``.npy`` file (or binary file object), read without pickles and
    checked as a member of :func:`read_npz`."""
    import os

    fh, name, own = _open_regular(path, what)
    try:
        start = fh.tell()
        size = os.fstat(fh.fileno()).st_size - start if own else fh.seek(0, 2) - start
        fh.seek(start)
        return _read_array(fh, size, f"{what} file {name!r}")
    except Exception as exc:
        raise _read_errors(what, name, exc) from None
    finally:
        if own:
            fh.close()


def check_output(path: "str | None", flag: str) -> None:
    """Refuse an output path that cannot be written, before any computation."""
    if not path:
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path!r}: folder {folder!r} does not exist (No such file or directory)")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag} {path!r} is not writable")
