"""Input validation at the public boundary (scikit-learn's ``check_array`` habit).

Everything the C core receives passes through here: dtypes, layout, shapes,
finiteness, labels and option names. Messages say what was received.
"""
from __future__ import annotations

import numbers
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


def encode_labels(train: Any, evals: Sequence[Any] = (), names: Sequence[str] = ()) -> tuple:
    """Map any hashable labels to 0..K-1 consistently across splits.

    Returns ``(classes, y_train, [y_eval, ...])`` with int32 codes.
    """
    y = _labels_1d(train, "train_labels")
    try:
        classes, y_tr = np.unique(y, return_inverse=True)
    except TypeError as exc:
        raise TypeError(f"train_labels mix types that cannot be ordered: {exc}") from None
    out = []
    for lab, nm in zip(evals, names):
        e = _labels_1d(lab, nm)
        try:
            e = e.astype(classes.dtype, copy=False) if e.dtype.kind == classes.dtype.kind else e
            pos = np.searchsorted(classes, e)
        except TypeError as exc:
            raise TypeError(f"{nm} cannot be compared with train_labels: {exc}") from None
        pos = np.clip(pos, 0, len(classes) - 1)
        bad = classes[pos] != e
        if np.any(bad):
            unknown = np.unique(e[bad])[:5].tolist()
            raise ValueError(f"{nm} contain classes not present in train_labels: {unknown}")
        out.append(pos.astype(np.int32))
    return classes, y_tr.astype(np.int32).reshape(-1), out


def _labels_1d(lab: Any, name: str) -> np.ndarray:
    lab = _from_torch(lab, name)
    if lab is None or isinstance(lab, (str, bytes)):
        raise TypeError(f"{name} must be a 1-D array of labels, got {type(lab).__name__}")
    a = np.asarray(lab)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contain NaN or Inf")
    if a.dtype.kind == "c":
        raise TypeError(f"{name} must not be complex")
    if a.dtype.kind == "O":
        if any(v is None for v in a):
            raise ValueError(f"{name} contain None")
        if any(isinstance(v, (float, np.floating)) and not np.isfinite(v) for v in a):
            raise ValueError(f"{name} contain NaN or Inf")  # NaN breaks the sorted class list
    return a


def check_option(value: Any, name: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")
    return value


def check_sparsities(s: Any) -> np.ndarray:
    try:
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


_CONTROLLER = None


def single_blas():
    """Context in which BLAS runs on one thread: the C kernels split their GEMMs
    over OpenMP threads themselves (one thread pool, no oversubscription).
    One threadpoolctl controller is kept (building one scans the loaded
    libraries, about 1 ms: most of a small ``iis.score``)."""
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


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
    """``json.dumps(data)``; also written to ``path`` (with a final newline) when given.
    The one writer behind every ``to_json`` method."""
    import json

    text = json.dumps(data, indent=indent)
    if path is not None:
        with open(path, "w") as fh:
            fh.write(text + "\n")
    return text


def read_npz(path: Any, what: str) -> dict:
    """All arrays of an ``.npz`` file as a dict, read without pickles.

    Raises FileNotFoundError for a missing file and ValueError naming ``what``
    for anything that is not a readable archive of plain arrays (a ``.npy``,
    text, truncated or bit-flipped file, object arrays). The file is opened by
    us so that it is closed even when NumPy fails on a corrupt zip directory.
    """
    import os
    import zipfile
    import zlib

    if isinstance(path, (str, os.PathLike)):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{what} file {path} does not exist (No such file or directory)")
        if os.path.isdir(path):
            raise ValueError(f"{what} file {path}: Is a directory")
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{what} file {path} is not an .npz archive (not a readable .npz: "
                             "corrupt or truncated, or another format)")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error, KeyError, NotImplementedError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{what} file {path} is corrupt or truncated ({exc})") from None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ValueError(f"{what} file {path} holds object arrays; save plain numeric arrays") from None
        raise ValueError(f"{what} file {path} is not readable ({exc})") from None
