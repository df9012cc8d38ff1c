"""Bad inputs at every public entry point (issue 7).

Each bad input must give a clear exception (type and message checked) and each odd
but valid input (layouts, dtypes, label types, edge sizes) a correct result: the
same numbers as the plain input where the values are the same. No input is ever
modified: every call below runs under ``frozen(...)``, which compares the inputs
(values, dtype, writeable flag) before and after, also when the call raises.

Entry points: ``iis.score``, ``iis.project``, ``iis.activation_stats``,
``ConceptLibrary`` (constructor, ``prototype``, ``cluster``, ``text``, ``load``,
``subset``), ``InterpretablePredictor`` (``fit``, ``predict``, ``predict_proba``,
``score``, ``explain``, ``load``) and the CLI (``iis score``, ``iis explain``).
"""
import contextlib
import copy
import io
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import iis
from iis.cli import main as cli_main

pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")

# ----------------------------------------------------------------------------- a small problem
_RNG = np.random.default_rng(20251121)
K, D, M = 3, 6, 7
_MEANS = _RNG.normal(size=(K, D)) * 1.5
YTR = np.tile(np.arange(K), 16)                  # 48 rows, every class present
XTR = _MEANS[YTR] + _RNG.normal(size=(48, D))
YEV = np.tile(np.arange(K), 8)                   # 24 rows
XEV = _MEANS[YEV] + _RNG.normal(size=(24, D))
P = _RNG.normal(size=(M, D))
GRID = (0.0, 0.5)


def _score(xtr=XTR, ytr=YTR, xev=XEV, yev=YEV, lib=P, **kw):
    kw.setdefault("sparsities", GRID)
    kw.setdefault("n_threads", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", iis.ConvergenceWarning)
        return iis.score(xtr, ytr, xev, yev, lib, **kw)


def _numbers(res):
    return (res.iis, res.arr.tolist(), res.ip_accuracy.tolist(), res.probe_accuracy, res.kept.tolist())


@pytest.fixture(scope="module")
def base():
    return _numbers(_score())


def _well_formed(res):
    assert isinstance(res, iis.IISResult)
    assert np.isfinite(res.iis) and np.all(np.isfinite(res.arr))
    assert 0.0 <= res.probe_accuracy <= 1.0 and np.all((res.ip_accuracy >= 0) & (res.ip_accuracy <= 1))
    return res


# ----------------------------------------------------------------------------- inputs never change
def _snap(o):
    if isinstance(o, np.ndarray):
        return ("a", o, o.copy(), o.dtype, o.flags.writeable, o.shape, o.strides)
    if isinstance(o, (list, tuple, dict)):
        return ("o", o, copy.deepcopy(o))
    return None


def _same_array(a, b):
    if a.dtype.kind in "fc":
        return np.array_equal(a, b, equal_nan=True)
    if a.dtype.kind == "O":
        return all(x is y or x == y for x, y in zip(a.ravel().tolist(), b.ravel().tolist()))
    return np.array_equal(a, b)


@contextlib.contextmanager
def frozen(*objs):
    """Assert that the arrays/lists in ``objs`` are unchanged afterwards (also on error)."""
    snaps = [s for s in map(_snap, objs) if s is not None]
    try:
        yield
    finally:
        for s in snaps:
            if s[0] == "a":
                _, o, c, dt, wr, shape, strides = s
                assert o.dtype == dt and o.shape == shape and o.strides == strides
                assert o.flags.writeable == wr, "the writeable flag of an input changed"
                assert _same_array(o, c), "an input array was modified"
            else:
                assert s[1] == s[2], "an input list was modified"


def expect(call, outcome, *inputs):
    """Run ``call`` under ``frozen(*inputs)``; ``outcome`` is (exception, regex) or None (success)."""
    with frozen(*inputs):
        if outcome is None:
            return call()
        exc, match = outcome
        with pytest.raises(exc, match=match or None):
            call()
        return None


# ----------------------------------------------------------------------------- generic matrices
def _with(x, i, j, v):
    y = np.array(x, dtype=np.float64, copy=True)
    y[i, j] = v
    return y


def bad_matrices(x):
    """(id, value, (exception, regex)) of 2-D float inputs that every entry point refuses."""
    n, d = x.shape
    return [
        ("nan", _with(x, 1, 2, np.nan), (ValueError, "NaN or Inf.*row 1")),
        ("inf", _with(x, n - 1, 0, np.inf), (ValueError, f"NaN or Inf.*row {n - 1}")),
        ("-inf", _with(x, 0, d - 1, -np.inf), (ValueError, "NaN or Inf.*row 0")),
        ("nan-float32", _with(x, 2, 0, np.nan).astype(np.float32), (ValueError, "NaN or Inf.*row 2")),
        ("1-D", np.array(x[0]), (ValueError, "2-D")),
        ("3-D", np.array(x)[None], (ValueError, "2-D")),
        ("0-D", np.float64(1.0), (ValueError, "2-D")),
        ("no-rows", np.array(x)[:0], (ValueError, "empty")),
        ("no-columns", np.array(x)[:, :0], (ValueError, "empty")),
        ("int64", np.round(x).astype(np.int64), (TypeError, "float32 or float64")),
        ("uint8", np.abs(np.round(x)).astype(np.uint8), (TypeError, "float32 or float64")),
        ("bool", np.asarray(x) > 0, (TypeError, "float32 or float64")),
        ("complex", np.asarray(x) + 0j, (TypeError, "float32 or float64")),
        ("object", np.asarray(x).astype(object), (TypeError, "float32 or float64")),
        ("str", np.asarray(x).astype(str), (TypeError, "float32 or float64")),
        ("longdouble", np.asarray(x).astype(np.longdouble), (TypeError, "float32 or float64")),
        ("datetime", np.zeros((n, d), "datetime64[s]"), (TypeError, "float32 or float64")),
        ("None", None, (TypeError, "2-D array")),
        ("string", "features.npy", (TypeError, "2-D array")),
        ("ragged", [[1.0, 2.0], [3.0]], (TypeError, "could not be converted")),
        ("dict", {"a": 1.0}, (TypeError, "float32 or float64")),
    ]


HUGE = ("huge", (ValueError, "rescale"))  # |x| > 1e30 overflows the activations / variances


def _unaligned(x):
    x = np.asarray(x, dtype=np.float64)
    buf = np.zeros(x.nbytes + 1, np.uint8)
    u = buf[1:].view(np.float64).reshape(x.shape)
    u[...] = x
    assert not u.flags.aligned
    return u


def _readonly(x):
    y = np.array(x, copy=True)
    y.flags.writeable = False
    return y


def _row_strided(x):
    n, d = x.shape
    big = np.zeros((2 * n, d + 3), x.dtype)
    big[::2, 1:d + 1] = x
    return big[::2, 1:d + 1]


def _col_strided(x):
    n, d = x.shape
    big = np.zeros((n, 2 * d), x.dtype)
    big[:, ::2] = x
    return big[:, ::2]


def _matrix(x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.asmatrix(x)


def same_matrices(x):
    """(id, value) of inputs that hold the same numbers as ``x`` in another layout or container."""
    return [
        ("read-only", _readonly(x)),
        ("fortran", np.asfortranarray(x)),
        ("row-strided", _row_strided(x)),
        ("column-strided", _col_strided(x)),
        ("negative-strides", np.array(x[::-1], copy=True)[::-1]),
        ("byte-swapped", np.asarray(x).astype(np.asarray(x).dtype.newbyteorder(">"))),
        ("unaligned", _unaligned(x)),
        ("list", np.asarray(x).tolist()),
        ("tuple", tuple(map(tuple, np.asarray(x).tolist()))),
        ("matrix-subclass", _matrix(x)),
    ]


# ============================================================================= iis.score
@pytest.mark.parametrize("where", ["train_features", "eval_features"])
@pytest.mark.parametrize("case", [c[0] for c in bad_matrices(XTR)] + ["huge"])
def test_score_refuses_bad_features(where, case):
    x = XTR if where == "train_features" else XEV
    table = {c[0]: c[1:] for c in bad_matrices(x)}
    table["huge"] = (_with(x, 3, 1, 1e31), HUGE[1])
    value, outcome = table[case]
    if where == "train_features":
        expect(lambda: _score(xtr=value), outcome, value, YTR, XEV, YEV, P)
    else:
        expect(lambda: _score(xev=value), outcome, XTR, YTR, value, YEV, P)


@pytest.mark.parametrize("where", ["train_features", "eval_features", "library"])
@pytest.mark.parametrize("case", [c[0] for c in same_matrices(XTR)])
def test_score_same_result_for_any_layout(base, where, case):
    src = {"train_features": XTR, "eval_features": XEV, "library": P}[where]
    value = dict(same_matrices(src))[case]
    kw = {"train_features": "xtr", "eval_features": "xev", "library": "lib"}[where]
    res = expect(lambda: _score(**{kw: value}), None, value)
    assert _numbers(res) == base


def test_score_same_result_for_memmap_and_float32_split(base, tmp_path):
    np.save(tmp_path / "x.npy", XTR)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert _numbers(expect(lambda: _score(xtr=mm), None, mm)) == base
    # float16 is widened to float32; a float32/float64 pair is promoted: valid, close to base
    res = _well_formed(_score(xtr=XTR.astype(np.float16), xev=XEV.astype(np.float32)))
    assert abs(res.probe_accuracy - base[3]) <= 2 / len(YEV)


def test_score_same_result_for_torch_tensors(base):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(XTR.copy())
    res = expect(lambda: _score(xtr=t, ytr=torch.from_numpy(YTR.copy())), None)
    assert _numbers(res) == base


@pytest.mark.parametrize("case", [c[0] for c in bad_matrices(P)])
def test_score_refuses_bad_library(case):
    value, outcome = {c[0]: c[1:] for c in bad_matrices(P)}[case]
    if case == "no-columns":  # refused as empty before any comparison of d
        outcome = (ValueError, "empty")
    expect(lambda: _score(lib=value), outcome, value)


@pytest.mark.parametrize("case,make,outcome", [
    ("zero-norm-row", lambda: _with(P, 2, slice(None), 0.0), (ValueError, r"zero norm at rows \[2\]")),
    ("wrong-d", lambda: P[:, :4], (ValueError, "d=6 but the concept library has d=4")),
    ("names-mismatch", lambda: iis.ConceptLibrary(P, names=["a", "b"]), (ValueError, "2 names for 7")),
])
def test_score_refuses_bad_library_shapes(case, make, outcome):
    expect(lambda: _score(lib=make()), outcome)


@pytest.mark.parametrize("scale", [1e200, 1e-200, 1e30, 1e-30])
def test_score_library_scale_is_irrelevant(base, scale):
    """Only the directions unit(P) are used: a 1e200 (1e-200) library gives the same ARR.
    (Its norm used to overflow to inf, giving all-zero activations, or underflow to 0.)"""
    lib = P * scale
    res = expect(lambda: _score(lib=lib), None, lib)
    np.testing.assert_allclose(res.arr, base[1], atol=1.5 / len(YEV))
    assert res.probe_accuracy == base[3]
    np.testing.assert_allclose(iis.ConceptLibrary(lib).unit(), iis.ConceptLibrary(P).unit(), atol=1e-15)


# ----------------------------------------------------------------------------- labels
def _obj(values):
    a = np.empty(len(values), dtype=object)
    a[:] = values
    return a


# order-preserving relabellings: classes keep their order, so every number is identical
SAME_LABELS = [
    ("int8", lambda y: y.astype(np.int8)),
    ("uint64-near-max", lambda y: y.astype(np.uint64) + np.uint64(2**64 - 10)),
    ("negative-huge", lambda y: y.astype(np.int64) * 10**17 - 4 * 10**18),
    ("python-big-ints", lambda y: _obj([int(v) * 10**30 - 7 for v in y])),
    ("integral-float", lambda y: y + 2.0),
    ("float32", lambda y: y.astype(np.float32)),
    ("strings", lambda y: np.array([f"class_{v}" for v in y])),
    ("bytes", lambda y: np.array([f"c{v}".encode() for v in y])),
    ("object-strings", lambda y: _obj([f"c{v}" for v in y])),
    ("datetime64", lambda y: y.astype("datetime64[D]")),
    ("list", lambda y: y.tolist()),
    ("tuple", lambda y: tuple(y.tolist())),
    ("read-only", _readonly),
    ("strided", lambda y: np.repeat(y, 2)[::2]),
    ("byte-swapped", lambda y: y.astype(">i8")),
]


@pytest.mark.parametrize("case", [c[0] for c in SAME_LABELS])
def test_score_same_result_for_any_label_type(base, case):
    f = dict(SAME_LABELS)[case]
    ytr, yev = f(YTR), f(YEV)
    res = expect(lambda: _score(ytr=ytr, yev=yev), None, ytr, yev)
    assert _numbers(res) == base


def test_score_labels_any_permutation_of_classes(base):
    """A relabelling that reorders the classes gives the same accuracies (up to rounding of W)."""
    res = _score(ytr=-YTR, yev=-YEV)
    assert abs(res.probe_accuracy - base[3]) <= 1 / len(YEV)
    np.testing.assert_allclose(res.ip_accuracy, base[2], atol=1.5 / len(YEV))


def _labels_with(y, i, v, dtype=None):
    a = np.array(y, dtype=dtype if dtype is not None else np.float64, copy=True)
    a[i] = v
    return a


BAD_LABELS = [
    ("nan", lambda y: _labels_with(y, 3, np.nan), (ValueError, "NaN")),
    ("inf", lambda y: _labels_with(y, 3, np.inf), (ValueError, "NaN or Inf")),
    ("object-None", lambda y: _obj([None] + y.tolist()[1:]), (ValueError, "None")),
    ("object-nan", lambda y: _obj([float("nan")] + y.tolist()[1:]), (ValueError, "NaN")),
    ("complex", lambda y: y + 0j, (TypeError, "complex")),
    ("fractional-float", lambda y: y + 0.5, (ValueError, "continuous")),
    ("mixed-str-int-list", lambda y: ["a"] + y.tolist()[1:], (TypeError, "mix strings and numbers")),
    ("2-D-column", lambda y: y[:, None], (ValueError, "1-D")),
    ("0-D", lambda y: np.int64(1), (ValueError, "1-D")),
    ("empty", lambda y: y[:0], (ValueError, "empty")),
    ("too-short", lambda y: y[:-1], (ValueError, "entries but")),
    ("too-long", lambda y: np.r_[y, y[:2]], (ValueError, "entries but")),
    ("None", lambda y: None, (TypeError, "1-D array of labels")),
    ("string", lambda y: "labels", (TypeError, "1-D array of labels")),
]


@pytest.mark.parametrize("where", ["train_labels", "eval_labels"])
@pytest.mark.parametrize("case", [c[0] for c in BAD_LABELS])
def test_score_refuses_bad_labels(where, case):
    make, outcome = {c[0]: c[1:] for c in BAD_LABELS}[case]
    if where == "train_labels":
        y = make(YTR)
        expect(lambda: _score(ytr=y), outcome, y)
    else:
        y = make(YEV)
        if case == "object-nan":  # no NaN class can be in train: reported as unknown
            outcome = (ValueError, "NaN|not present")
        expect(lambda: _score(yev=y), outcome, y)


@pytest.mark.parametrize("case,ytr,yev,outcome", [
    ("eval-strings-train-ints", YTR, YEV.astype(str), (ValueError, "none of the eval_labels")),
    ("eval-ints-train-strings", YTR.astype(str), YEV, (ValueError, "none of the eval_labels")),
    ("train-mixed-types", _obj(["a", 1] * 24), YEV, (TypeError, "mix strings and numbers")),
    ("eval-mixed-types", YTR, _obj(["a", 1] * 12), (TypeError, "mix strings and numbers")),
    ("train-unorderable", _obj([1, (2,)] * 24), YEV, (TypeError, "cannot be ordered")),
    ("one-class", np.zeros(48, int), np.zeros(24, int), (ValueError, "at least 2")),
    ("negative-and-positive-unseen", YTR, -YEV - 1, (ValueError, "none of the eval_labels")),
])
def test_score_refuses_labels_that_differ_between_splits(case, ytr, yev, outcome):
    expect(lambda: _score(ytr=ytr, yev=yev), outcome, ytr, yev)


def test_score_eval_class_unseen_counts_as_errors():
    """A row of a class absent from train counts as an error (warned): the accuracies are
    those without it times 23/24, ARR and the IIS those without it."""
    yev = np.r_[YEV[:-1], 7]
    with pytest.warns(UserWarning, match=r"1 of 24 eval_labels \(classes \[7\]\)"):
        res = expect(lambda: _score(yev=yev), None, yev)
    ref = _score(xev=XEV[:-1], yev=YEV[:-1])
    assert res.probe_accuracy == pytest.approx(ref.probe_accuracy * 23 / 24, abs=1e-12)
    assert res.arr.tolist() == ref.arr.tolist() and res.iis == ref.iis and res.n_eval == 24


def test_score_one_sample_train_is_one_class():
    expect(lambda: _score(xtr=XTR[:1], ytr=YTR[:1], yev=np.zeros(24, int)), (ValueError, "at least 2"))


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("case,kw,outcome", [
    ("eval-d", dict(xev=XEV[:, :5]), (ValueError, "d=6 but eval_features have d=5")),
    ("train-rows", dict(xtr=XTR[:-1]), (ValueError, "train_labels has 48 entries but train_features has 47")),
    ("eval-rows", dict(xev=XEV[:-2]), (ValueError, "eval_labels has 24 entries but eval_features has 22")),
    ("transposed", dict(xtr=XTR.T), (ValueError, "train_features have d=48 but eval_features have d=6")),
])
def test_score_refuses_mismatched_shapes(case, kw, outcome):
    expect(lambda: _score(**kw), outcome, *kw.values())


# ----------------------------------------------------------------------------- valid edge cases
@pytest.mark.parametrize("case,kw", [
    ("one-eval-sample", dict(xev=XEV[:1], yev=YEV[:1])),
    ("two-train-samples", dict(xtr=XTR[:2], ytr=YTR[:2], xev=XEV[:3], yev=np.array([0, 1, 0]))),
    ("one-sample-per-class", dict(xtr=XTR[:3], ytr=YTR[:3])),
    ("eval-subset-of-classes", dict(xev=XEV[YEV < 2], yev=YEV[YEV < 2])),
    ("more-concepts-than-samples-and-d", dict(lib=_RNG.normal(size=(100, D)))),
    ("one-concept", dict(lib=P[:1])),
    ("duplicate-concepts", dict(lib=np.vstack([P, P]))),
    ("all-zero-features", dict(xtr=np.zeros_like(XTR), xev=np.zeros_like(XEV))),
    ("constant-column", dict(xtr=_with(XTR, slice(None), 0, 3.0))),
    ("duplicate-rows", dict(xtr=np.vstack([XTR, XTR]), ytr=np.r_[YTR, YTR])),
    ("d=1", dict(xtr=XTR[:, :1], xev=XEV[:, :1], lib=np.array([[1.0], [-2.0]]))),
    ("float32", dict(xtr=XTR.astype(np.float32), xev=XEV.astype(np.float32))),
    ("two-classes-bool-labels", dict(ytr=YTR > 0, yev=YEV > 0)),
    ("many-classes", dict(ytr=np.arange(48) // 2, yev=np.arange(24))),
    ("keep-published-k0", dict(sparsities=(0.0, 0.5, 0.9), keep="published")),
    ("soft-mask-standardize", dict(mask="soft", normalize="standardize")),
    ("no-normalisation", dict(normalize="none")),
    ("max_iter-1", dict(max_iter=1)),
    ("max_iter-huge", dict(max_iter=10**12)),
    ("l2-0", dict(l2=0.0)),
    ("l2-huge", dict(l2=1e300)),
    ("tol-huge", dict(tol=1e300)),
    ("n_threads--1", dict(n_threads=-1)),
    ("n_threads-very-negative", dict(n_threads=-10**9)),
    ("n_threads-100000", dict(n_threads=100000)),   # used to crash inside libgomp
    ("n_threads-10**12", dict(n_threads=10**12)),
    ("n_threads-numpy-int", dict(n_threads=np.int64(2))),
    ("max_iter-numpy-int", dict(max_iter=np.int32(50))),
    ("sparsities-numpy", dict(sparsities=np.array([0.0, 0.5]))),
    ("sparsities-0.999", dict(sparsities=(0.0, 0.999))),
    ("progress", dict(progress=True)),
])
def test_score_valid_edge_cases(case, kw):
    res = _well_formed(expect(lambda: _score(**kw), None, *kw.values()))
    assert res.kept.min() >= 0


def test_score_all_zero_features_is_majority_class():
    res = _score(xtr=np.zeros_like(XTR), xev=np.zeros_like(XEV))
    assert res.probe_accuracy == pytest.approx(1 / 3)  # every class equally frequent: class 0 wins ties
    assert np.all(res.ip_accuracy == pytest.approx(1 / 3))


def test_score_unsorted_and_duplicate_sparsities(base):
    assert _numbers(_score(sparsities=[0.5, 0.0, 0.5, 0.0])) == base


def test_score_sparsities_hold_kept_counts():
    res = _score(sparsities=(0.0, 0.5, 0.9), keep="published")
    assert res.kept.tolist() == [6, 3, 0]


# ----------------------------------------------------------------------------- options
BAD_OPTIONS = [
    ("sparsities-empty", dict(sparsities=[]), (ValueError, "at least 2")),
    ("sparsities-one", dict(sparsities=[0.5]), (ValueError, "at least 2")),
    ("sparsities-same", dict(sparsities=[0.5, 0.5]), (ValueError, "2 distinct")),
    ("sparsities-1", dict(sparsities=[0.0, 1.0]), (ValueError, r"\[0, 1\)")),
    ("sparsities-negative", dict(sparsities=[-0.1, 0.5]), (ValueError, r"\[0, 1\)")),
    ("sparsities-nan", dict(sparsities=[0.0, np.nan]), (ValueError, r"\[0, 1\)")),
    ("sparsities-inf", dict(sparsities=[0.0, np.inf]), (ValueError, r"\[0, 1\)")),
    ("sparsities-huge", dict(sparsities=[0.0, 1e300]), (ValueError, r"\[0, 1\)")),
    ("sparsities-string", dict(sparsities="0,0.5"), (TypeError, "sequence of numbers")),
    ("sparsities-words", dict(sparsities=["a", "b"]), (TypeError, "sequence of numbers")),
    ("sparsities-None", dict(sparsities=None), (ValueError, "at least 2")),
    ("normalize-case", dict(normalize="LayerNorm"), (ValueError, "normalize='LayerNorm' is not one of")),
    ("normalize-empty", dict(normalize=""), (ValueError, "is not one of")),
    ("normalize-int", dict(normalize=1), (ValueError, "is not one of")),
    ("mask", dict(mask="Hard"), (ValueError, "mask='Hard' is not one of")),
    ("mask-None", dict(mask=None), (ValueError, "mask=None is not one of")),
    ("keep", dict(keep="paper"), (ValueError, "keep='paper' is not one of")),
    ("l2-negative", dict(l2=-1e-4), (ValueError, "l2 must be >= 0")),
    ("l2-nan", dict(l2=np.nan), (ValueError, "l2 must be >= 0")),
    ("l2-inf", dict(l2=np.inf), (ValueError, "l2 must be >= 0")),
    ("l2-string", dict(l2="1e-4"), (TypeError, "l2 must be a number")),
    ("l2-None", dict(l2=None), (TypeError, "l2 must be a number")),
    ("l2-bool", dict(l2=True), (TypeError, "l2 must be a number")),
    ("l2-complex", dict(l2=1e-4 + 0j), (TypeError, "l2 must be a number")),
    ("tol-0", dict(tol=0.0), (ValueError, "tol must be > 0")),
    ("tol-negative", dict(tol=-1.0), (ValueError, "tol must be > 0")),
    ("tol-nan", dict(tol=np.nan), (ValueError, "tol must be > 0")),
    ("max_iter-0", dict(max_iter=0), (ValueError, "max_iter must be > 0")),
    ("max_iter-negative", dict(max_iter=-5), (ValueError, "max_iter must be > 0")),
    ("max_iter-float", dict(max_iter=10.5), (TypeError, "max_iter must be an integer")),
    ("max_iter-bool", dict(max_iter=True), (TypeError, "max_iter must be a number")),
    ("n_threads-0", dict(n_threads=0), (ValueError, "n_threads must be None or a non-zero integer")),
    ("n_threads-float", dict(n_threads=1.5), (ValueError, "n_threads")),
    ("n_threads-string", dict(n_threads="2"), (ValueError, "n_threads")),
    ("n_threads-bool", dict(n_threads=True), (ValueError, "n_threads")),
    ("progress-string", dict(progress="yes"), (TypeError, "progress must be None, True, False or a callable")),
    ("unknown-option", dict(sparsity=0.5), (TypeError, "unexpected keyword argument 'sparsity'")),
    ("unknown-option-2", dict(foo=1), (TypeError, "unexpected keyword argument 'foo'")),
]


@pytest.mark.parametrize("case", [c[0] for c in BAD_OPTIONS])
def test_score_refuses_bad_options(case):
    kw, outcome = {c[0]: c[1:] for c in BAD_OPTIONS}[case]
    expect(lambda: _score(**kw), outcome, *kw.values())


def test_score_refuses_extra_positional_argument():
    with pytest.raises(TypeError):
        iis.score(XTR, YTR, XEV, YEV, P, GRID)


# ============================================================================= project / activation_stats
@pytest.mark.parametrize("case", [c[0] for c in bad_matrices(XTR)] + ["huge"])
def test_project_and_stats_refuse_bad_features(case):
    table = {c[0]: c[1:] for c in bad_matrices(XTR)}
    table["huge"] = (_with(XTR, 0, 0, -1e31), HUGE[1])
    value, outcome = table[case]
    expect(lambda: iis.project(value, P), outcome, value)
    expect(lambda: iis.activation_stats(value, P), outcome, value)


@pytest.mark.parametrize("case", [c[0] for c in same_matrices(XTR)])
def test_project_same_result_for_any_layout(case):
    value = dict(same_matrices(XTR))[case]
    for norm in ("layernorm", "none", "standardize"):
        out = expect(lambda: iis.project(value, P, norm), None, value)
        np.testing.assert_array_equal(out, iis.project(XTR, P, norm))


@pytest.mark.parametrize("case,stats,outcome", [
    ("zero-std", (np.zeros(M), np.zeros(M)), (ValueError, "std > 0")),
    ("negative-std", (np.zeros(M), -np.ones(M)), (ValueError, "std > 0")),
    ("nan-mean", (np.full(M, np.nan), np.ones(M)), (ValueError, "finite")),
    ("wrong-length", (np.zeros(3), np.ones(3)), (ValueError, "3 means and 3 stds for 7 concepts")),
    ("not-a-pair", np.ones(5), (TypeError, "pair")),
    ("three-items", (np.zeros(M), np.ones(M), np.ones(M)), (TypeError, "pair")),
    ("None-items", (None, None), (ValueError, "for 7 concepts")),
])
def test_project_refuses_bad_stats(case, stats, outcome):
    expect(lambda: iis.project(XEV, P, "standardize", stats=stats), outcome, *(
        stats if isinstance(stats, tuple) else (stats,)))


def test_project_stats_as_lists_and_float32():
    mean, std = iis.activation_stats(XTR, P)
    a = iis.project(XEV, P, "standardize", stats=(mean.tolist(), std.astype(np.float32)))
    np.testing.assert_allclose(a, iis.project(XEV, P, "standardize", stats=(mean, std)), rtol=1e-6)


@pytest.mark.parametrize("kw,outcome", [
    (dict(normalize="z"), (ValueError, "normalize='z'")),
    (dict(n_threads=0), (ValueError, "n_threads")),
])
def test_project_refuses_bad_options(kw, outcome):
    expect(lambda: iis.project(XTR, P, **kw), outcome)


# ============================================================================= ConceptLibrary
@pytest.mark.parametrize("case", [c[0] for c in bad_matrices(P)])
def test_library_refuses_bad_vectors(case):
    value, outcome = {c[0]: c[1:] for c in bad_matrices(P)}[case]
    expect(lambda: iis.ConceptLibrary(value), outcome, value)


@pytest.mark.parametrize("case,kw,outcome", [
    ("zero-row", dict(vectors=_with(P, 0, slice(None), 0.0)), (ValueError, r"zero norm at rows \[0\]")),
    ("names-short", dict(vectors=P, names=["a"]), (ValueError, "1 names for 7")),
    ("names-string", dict(vectors=P, names="abcdefg"), (TypeError, "single string")),
    ("default_normalize", dict(vectors=P, default_normalize="zscore"), (ValueError, "default_normalize")),
])
def test_library_refuses_bad_arguments(case, kw, outcome):
    expect(lambda: iis.ConceptLibrary(**kw), outcome, *kw.values())


def test_library_keeps_its_own_copy():
    v = P.copy()
    lib = iis.ConceptLibrary(v)
    v[:] = 0
    assert np.array_equal(lib.vectors, P)


@pytest.mark.parametrize("index,outcome", [
    ([0, 99], (IndexError, "out of bounds")),
    ([True, False], (ValueError, "boolean index needs 7 entries")),
])
def test_library_subset_refuses_bad_index(index, outcome):
    expect(lambda: iis.ConceptLibrary(P).subset(index), outcome, index)


ELEMENTS = np.vstack([XTR, XEV])
ELEMENT_LABELS = np.r_[YTR, YEV]


@pytest.mark.parametrize("builder", ["prototype", "cluster"])
@pytest.mark.parametrize("case", [c[0] for c in bad_matrices(ELEMENTS)] + ["huge"])
def test_library_builders_refuse_bad_elements(builder, case):
    table = {c[0]: c[1:] for c in bad_matrices(ELEMENTS)}
    table["huge"] = (_with(ELEMENTS, 5, 5, 1e40), HUGE[1])
    value, outcome = table[case]
    if builder == "prototype":
        expect(lambda: iis.ConceptLibrary.prototype(value, ELEMENT_LABELS, n_concepts=4), outcome, value)
    else:
        expect(lambda: iis.ConceptLibrary.cluster(value, n_concepts=4, n_threads=1), outcome, value)


@pytest.mark.parametrize("case,call,outcome", [
    ("proto-more-concepts-than-elements",
     lambda: iis.ConceptLibrary.prototype(ELEMENTS, ELEMENT_LABELS, n_concepts=73),
     (ValueError, "exceeds the 72")),
    ("proto-n0", lambda: iis.ConceptLibrary.prototype(ELEMENTS, ELEMENT_LABELS, n_concepts=0),
     (ValueError, ">= 1")),
    ("proto-n-float", lambda: iis.ConceptLibrary.prototype(ELEMENTS, ELEMENT_LABELS, n_concepts=2.5),
     (TypeError, "integer")),
    ("proto-n-bool", lambda: iis.ConceptLibrary.prototype(ELEMENTS, ELEMENT_LABELS, n_concepts=True),
     (TypeError, "integer")),
    ("proto-labels-short", lambda: iis.ConceptLibrary.prototype(ELEMENTS, ELEMENT_LABELS[:5], n_concepts=4),
     (ValueError, "5 entries for 72 elements")),
    ("proto-labels-nan", lambda: iis.ConceptLibrary.prototype(ELEMENTS, ELEMENT_LABELS + np.nan, n_concepts=4),
     (ValueError, "NaN")),
    ("proto-labels-None", lambda: iis.ConceptLibrary.prototype(ELEMENTS, None, n_concepts=4),
     (TypeError, "labels")),
    ("proto-all-zero", lambda: iis.ConceptLibrary.prototype(np.zeros((10, 3)), np.arange(10) % 2, n_concepts=3),
     (ValueError, "non-zero norm")),
    ("proto-seed-negative", lambda: iis.ConceptLibrary.prototype(ELEMENTS, ELEMENT_LABELS, n_concepts=4, seed=-1),
     (ValueError, "non-negative")),
    ("cluster-more-concepts-than-elements", lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=100),
     (ValueError, "exceeds the 72")),
    ("cluster-more-concepts-than-max-elements",
     lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=10, max_elements=5), (ValueError, "exceeds the 5")),
    ("cluster-max_elements-0", lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=3, max_elements=0),
     (ValueError, "max_elements must be >= 1")),
    ("cluster-max_iter-negative", lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=3, max_iter=-1),
     (ValueError, "max_iter must be an integer >= 0")),
    ("cluster-max_iter-float", lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=3, max_iter=1.5),
     (ValueError, "max_iter must be an integer")),
    ("cluster-tol-negative", lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=3, tol=-1.0),
     (ValueError, "tol must be a finite number >= 0")),
    ("cluster-tol-nan", lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=3, tol=np.nan),
     (ValueError, "tol must be")),
    ("cluster-all-zero", lambda: iis.ConceptLibrary.cluster(np.zeros((30, 4)), n_concepts=3),
     (ValueError, "zero vector")),
    ("cluster-labels-short",
     lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=3, max_elements=10, element_labels=YTR[:5]),
     (ValueError, "5 entries for 72 elements")),
    ("cluster-n_threads-0", lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=3, n_threads=0),
     (ValueError, "n_threads")),
])
def test_library_builders_refuse_bad_arguments(case, call, outcome):
    expect(call, outcome, ELEMENTS, ELEMENT_LABELS)


@pytest.mark.parametrize("case,call", [
    ("proto-k-equals-n", lambda: iis.ConceptLibrary.prototype(ELEMENTS, ELEMENT_LABELS, n_concepts=72)),
    ("proto-some-zero-elements", lambda: iis.ConceptLibrary.prototype(
        np.vstack([np.zeros((5, D)), ELEMENTS]), np.r_[np.zeros(5, int), ELEMENT_LABELS], n_concepts=40)),
    ("proto-tiny-elements", lambda: iis.ConceptLibrary.prototype(ELEMENTS * 1e-200, ELEMENT_LABELS, n_concepts=5)),
    ("cluster-k-equals-n", lambda: iis.ConceptLibrary.cluster(ELEMENTS[:20], n_concepts=20, n_threads=1)),
    ("cluster-constant-elements", lambda: iis.ConceptLibrary.cluster(np.ones((30, 4)), n_concepts=3)),
    ("cluster-max_iter-0", lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=3, max_iter=0)),
    ("cluster-max_iter-huge", lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=3, max_iter=10**12)),
    ("cluster-seed-huge", lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=3, seed=2**70)),
    ("cluster-one-element", lambda: iis.ConceptLibrary.cluster(ELEMENTS[:1], n_concepts=1)),
    ("cluster-subsampled-stratified",
     lambda: iis.ConceptLibrary.cluster(ELEMENTS, n_concepts=3, max_elements=10, element_labels=ELEMENT_LABELS)),
])
def test_library_builders_valid_edge_cases(case, call):
    lib = expect(call, None, ELEMENTS, ELEMENT_LABELS)
    u = lib.unit()
    assert np.all(np.isfinite(u)) and np.allclose(np.linalg.norm(u, axis=1), 1.0)


def test_text_library_refuses_bad_inputs():
    concepts = ["red", "round", "furry"]
    img = _RNG.normal(size=(48, 5))
    txt = _RNG.normal(size=(3, 5))
    ok = dict(concepts=concepts, train_features=XTR, clip_image_features=img, clip_text_features=txt, steps=2)
    cases = [
        (dict(concepts="red"), (TypeError, "sequence of strings")),
        (dict(concepts=["red", "red", "x"]), (ValueError, "duplicates")),
        (dict(concepts=["red", "", "x"]), (ValueError, "blank")),
        (dict(concepts=["red", 1, "x"]), (TypeError, "expected str")),
        (dict(concepts=[]), (ValueError, "empty")),
        (dict(clip_image_features=img[:-1]), (ValueError, "47 rows")),
        (dict(clip_text_features=txt[:2]), (ValueError, "2 rows for 3 concepts")),
        (dict(clip_text_features=txt[:, :4]), (ValueError, "same CLIP model")),
        (dict(clip_text_features=_with(txt, 1, slice(None), 0.0)), (ValueError, "zero-norm")),
        (dict(clip_image_features=_with(img, 0, 0, np.nan)), (ValueError, "NaN")),
        (dict(train_features=_with(XTR, 0, 0, np.inf)), (ValueError, "NaN")),
        (dict(train_features=XTR[:, 0]), (ValueError, "2-D")),
        (dict(holdout=1.5), (ValueError, "holdout")),
        (dict(holdout=0.0), (ValueError, "holdout")),
        (dict(steps=-1), (ValueError, "steps")),
        (dict(eval_every=0), (ValueError, "eval_every")),
        (dict(top5_cutoff=2.0), (ValueError, "top5_cutoff")),
        (dict(lr=0.0), (ValueError, "lr")),
        (dict(seed=-1), (ValueError, "seed")),
        (dict(progress="y"), (TypeError, "progress")),
        (dict(n_threads=0), (ValueError, "n_threads")),
        (dict(train_features=XTR[:3], clip_image_features=img[:3]), (ValueError, "too few")),
    ]
    for over, outcome in cases:
        kw = {**ok, **over}
        expect(lambda: iis.ConceptLibrary.text(**kw), outcome, *kw.values())


def _read(path):
    with open(path, "rb") as fh:
        return fh.read()


def _write(path, data):
    with open(path, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


# ----------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good, corrupt, truncated and mistyped files for the loaders and the CLI."""
    d = tmp_path_factory.mktemp("bad_input_files")
    f = {}

    def path(name):
        f[name] = str(d / name)
        return f[name]

    np.savez(path("train.npz"), features=XTR, labels=YTR)
    np.savez(path("eval.npz"), features=XEV, labels=YEV)
    good = _read(f["train.npz"])
    _write(path("truncated.npz"), good[: len(good) // 2])
    _write(path("truncated-head.npz"), good[:10])
    _write(path("empty.npz"), b"")
    _write(path("random.npz"), np.random.default_rng(0).bytes(777))
    _write(path("text.npz"), "features,labels\n1,2\n")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    _write(path("bitflip.npz"), bytes(flipped))
    np.save(path("array.npy"), XTR)
    os.mkdir(path("folder.npz"))
    np.savez(path("no-features.npz"), labels=YTR)
    np.savez(path("no-labels.npz"), features=XTR)
    np.savez(path("object.npz"), features=XTR.astype(object), labels=YTR)
    np.savez(path("nan.npz"), features=_with(XTR, 4, 1, np.nan), labels=YTR)
    np.savez(path("inf-eval.npz"), features=_with(XEV, 0, 0, np.inf), labels=YEV)
    np.savez(path("huge.npz"), features=_with(XTR, 4, 1, 1e35), labels=YTR)
    np.savez(path("1d.npz"), features=XTR[0], labels=YTR)
    np.savez(path("3d.npz"), features=XTR[None], labels=YTR)
    np.savez(path("int-features.npz"), features=np.round(XTR).astype(int), labels=YTR)
    np.savez(path("str-features.npz"), features=XTR.astype(str), labels=YTR)
    np.savez(path("complex-features.npz"), features=XTR + 1j, labels=YTR)
    np.savez(path("empty-features.npz"), features=XTR[:0], labels=YTR[:0])
    np.savez(path("labels-2d.npz"), features=XTR, labels=YTR[:, None])
    np.savez(path("labels-nan.npz"), features=XTR, labels=YTR + np.nan)
    np.savez(path("labels-short.npz"), features=XTR, labels=YTR[:-1])
    np.savez(path("one-class.npz"), features=XTR, labels=np.zeros(48, int))
    np.savez(path("eval-d5.npz"), features=XEV[:, :5], labels=YEV)
    np.savez(path("eval-unseen.npz"), features=XEV, labels=YEV + 3)
    lib = iis.ConceptLibrary(P)
    lib.save(path("library.npz"))
    good_lib = _read(f["library.npz"])
    _write(path("library-truncated.npz"), good_lib[: len(good_lib) * 2 // 3])
    np.savez(path("library-object.npz"), vectors=P.astype(object))
    np.savez(path("library-str.npz"), vectors=P.astype(str))
    np.savez(path("library-zero-row.npz"), vectors=_with(P, 0, slice(None), 0.0))
    np.savez(path("library-d4.npz"), vectors=P[:, :4])
    np.savez(path("library-bad-names.npz"), vectors=P, names=np.array(["a"]))
    np.savez(path("library-bad-normalize.npz"), vectors=P, default_normalize=np.array("zzz"))
    clf = iis.InterpretablePredictor(lib, sparsity=0.5, n_threads=1).fit(XTR, YTR)
    clf.save(path("model.npz"))
    good_model = _read(f["model.npz"])
    _write(path("model-truncated.npz"), good_model[: len(good_model) // 2])
    flipped = bytearray(good_model)
    flipped[len(good_model) // 2] ^= 0xFF
    _write(path("model-bitflip.npz"), bytes(flipped))
    f["missing.npz"] = str(d / "missing.npz")
    return f


LIBRARY_FILES = [
    ("missing.npz", (FileNotFoundError, "")),
    ("truncated.npz", (ValueError, "not an .npz archive")),
    ("truncated-head.npz", (ValueError, "not an .npz archive")),
    ("empty.npz", (ValueError, "not an .npz archive")),
    ("random.npz", (ValueError, "not an .npz archive")),
    ("text.npz", (ValueError, "not an .npz archive")),
    ("array.npy", (ValueError, "not an .npz archive")),
    ("folder.npz", (ValueError, "Is a directory")),
    ("library-truncated.npz", (ValueError, "not an .npz archive|corrupt")),
    ("train.npz", (ValueError, "no 'vectors' array")),
    ("library-object.npz", (ValueError, "[Oo]bject arrays")),
    ("library-str.npz", (TypeError, "float32 or float64")),
    ("library-zero-row.npz", (ValueError, "zero norm")),
    ("library-bad-names.npz", (ValueError, "1 names for 7")),
    ("library-bad-normalize.npz", (ValueError, "default_normalize")),
]


@pytest.mark.parametrize("name", [c[0] for c in LIBRARY_FILES])
def test_library_load_refuses_bad_files(files, name):
    expect(lambda: iis.ConceptLibrary.load(files[name]), dict(LIBRARY_FILES)[name])


@pytest.mark.parametrize("which", ["library", "predictor", "cli-train"])
def test_loaders_survive_bit_flips(files, which, tmp_path):
    """A flipped byte anywhere in a file gives a clear exception (zip CRC, header or format
    check) or, where it hits bytes nobody reads (zip padding), a valid object."""
    src = {"library": "library.npz", "predictor": "model.npz", "cli-train": "train.npz"}[which]
    good = _read(files[src])
    outcomes = {"refused": 0, "loaded": 0}
    for pos in range(0, len(good), max(1, len(good) // 40)):
        flipped = bytearray(good)
        flipped[pos] ^= 0x5A
        p = tmp_path / f"flip{pos}.npz"
        p.write_bytes(bytes(flipped))
        if which == "cli-train":
            rc, out, err = _cli(*_score_argv(files, str(p), "eval.npz", "prototype:5"))
            assert "Traceback" not in err
            assert rc in (0, 2) and (rc == 0 or err.strip().splitlines()[-1].startswith("iis: error: ")), err
            outcomes["refused" if rc == 2 else "loaded"] += 1
            continue
        loader = iis.ConceptLibrary.load if which == "library" else iis.InterpretablePredictor.load
        try:
            obj = loader(str(p))
        except (ValueError, TypeError) as exc:
            assert str(exc), "an exception without a message"
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        lib = obj if which == "library" else obj.library_
        assert np.all(np.isfinite(lib.unit()))
    assert outcomes["refused"] > 0


@pytest.mark.parametrize("drop", ["library_names", "coef", "info-key"])
def test_predictor_load_names_a_missing_member(fitted, drop, tmp_path):
    """A predictor archive that reads but lacks a member (e.g. a damaged member name) is
    refused with a ValueError naming what is missing, not a KeyError."""
    import json
    good = tmp_path / "good.npz"
    fitted.save(str(good))
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    if drop == "info-key":
        info = json.loads(str(arrays["info"]))
        del info["k_"]
        arrays["info"] = np.asarray(json.dumps(info))
    else:
        del arrays[drop]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match="k_" if drop == "info-key" else drop):
        iis.InterpretablePredictor.load(str(bad))
    assert iis.InterpretablePredictor.load(str(good)).k_ == fitted.k_


# ============================================================================= InterpretablePredictor
def _clf(**kw):
    kw.setdefault("n_threads", 1)
    kw.setdefault("sparsity", 0.5)
    return iis.InterpretablePredictor(iis.ConceptLibrary(P), **kw)


@pytest.fixture(scope="module")
def fitted():
    return _clf().fit(XTR, YTR)


@pytest.mark.parametrize("case", [c[0] for c in bad_matrices(XTR)] + ["huge"])
def test_predictor_refuses_bad_features(fitted, case):
    table = {c[0]: c[1:] for c in bad_matrices(XTR)}
    table["huge"] = (_with(XTR, 3, 3, 1e31), HUGE[1])
    value, outcome = table[case]
    expect(lambda: _clf().fit(value, YTR), outcome, value)
    if case in ("no-rows",):
        outcome = (ValueError, "empty")
    for method in (fitted.predict, fitted.predict_proba, fitted.decision_function, fitted.explain):
        expect(lambda: method(value), outcome, value)


@pytest.mark.parametrize("case", [c[0] for c in same_matrices(XEV)])
def test_predictor_same_result_for_any_layout(fitted, case):
    value = dict(same_matrices(XEV))[case]
    expected = fitted.decision_function(XEV)
    np.testing.assert_array_equal(expect(lambda: fitted.decision_function(value), None, value), expected)
    xtr = dict(same_matrices(XTR))[case]
    refit = expect(lambda: _clf().fit(xtr, YTR), None, xtr)
    np.testing.assert_array_equal(refit.coef_, fitted.coef_)


@pytest.mark.parametrize("case", [c[0] for c in BAD_LABELS if c[0] not in ("too-short", "too-long")])
def test_predictor_refuses_bad_labels(case):
    make, outcome = {c[0]: c[1:] for c in BAD_LABELS}[case]
    y = make(YTR)
    expect(lambda: _clf().fit(XTR, y), outcome, y)


@pytest.mark.parametrize("case", [c[0] for c in SAME_LABELS])
def test_predictor_same_result_for_any_label_type(fitted, case):
    y = dict(SAME_LABELS)[case](YTR)
    clf = expect(lambda: _clf().fit(XTR, y), None, y)
    np.testing.assert_array_equal(clf.coef_, fitted.coef_)
    assert len(clf.classes_) == K


@pytest.mark.parametrize("case,kw,call,outcome", [
    ("sparsity-1", dict(sparsity=1.0), "fit", (ValueError, r"sparsity must be a number in \[0, 1\)")),
    ("sparsity-negative", dict(sparsity=-0.1), "fit", (ValueError, "sparsity")),
    ("sparsity-nan", dict(sparsity=np.nan), "fit", (ValueError, "sparsity")),
    ("sparsity-string", dict(sparsity="0.5"), "fit", (ValueError, "sparsity")),
    ("normalize", dict(normalize="z"), "fit", (ValueError, "normalize")),
    ("mask", dict(mask="z"), "fit", (ValueError, "mask")),
    ("l2", dict(l2=-1.0), "fit", (ValueError, "l2")),
    ("tol", dict(tol=0.0), "fit", (ValueError, "tol")),
    ("max_iter", dict(max_iter=0), "fit", (ValueError, "max_iter")),
    ("n_threads", dict(n_threads=0), "fit", (ValueError, "n_threads")),
    ("no-library", dict(), "fit-nolib", (ValueError, "needs a concept library")),
    ("library-d", dict(), "fit-d", (ValueError, "d=5 but the concept library has d=6")),
    ("one-class", dict(), "fit-one-class", (ValueError, "at least 2")),
    ("labels-short", dict(), "fit-short", (ValueError, "47 entries but X has 48")),
    ("unfitted", dict(), "predict", (ValueError, "not fitted")),
    ("set_params", dict(), "set_params", (ValueError, "invalid parameter 'foo'")),
])
def test_predictor_refuses_bad_arguments(case, kw, call, outcome):
    clf = _clf(**kw)
    calls = {
        "fit": lambda: clf.fit(XTR, YTR),
        "fit-nolib": lambda: iis.InterpretablePredictor().fit(XTR, YTR),
        "fit-d": lambda: clf.fit(XTR[:, :5], YTR),
        "fit-one-class": lambda: clf.fit(XTR, np.zeros(48)),
        "fit-short": lambda: clf.fit(XTR, YTR[:-1]),
        "predict": lambda: clf.predict(XEV),
        "set_params": lambda: clf.set_params(foo=1),
    }
    expect(calls[call], outcome, XTR, YTR, XEV)


@pytest.mark.parametrize("case,call,outcome", [
    ("predict-d", lambda c: c.predict(XEV[:, :5]), (ValueError, "5 features but the predictor was fitted on 6")),
    ("score-short", lambda c: c.score(XEV, YEV[:3]), (ValueError, "3 entries but X has 24")),
    ("score-weights-negative", lambda c: c.score(XEV, YEV, sample_weight=-np.ones(24)),
     (ValueError, "sample_weight")),
    ("score-weights-nan", lambda c: c.score(XEV, YEV, sample_weight=np.full(24, np.nan)),
     (ValueError, "sample_weight")),
    ("explain-top-0", lambda c: c.explain(XEV[:2], top=0), (ValueError, "top must be")),
    ("explain-by", lambda c: c.explain(XEV[:2], by="size"), (ValueError, "by='size'")),
    ("global-top", lambda c: c.global_explanation(top=-1), (ValueError, "top must be")),
])
def test_predictor_refuses_bad_method_arguments(fitted, case, call, outcome):
    expect(lambda: call(fitted), outcome, XEV, YEV)


def test_predictor_valid_edge_cases(fitted):
    assert fitted.predict(XEV[:1]).shape == (1,)
    with pytest.warns(UserWarning, match="count as errors"):  # unseen labels, as in iis.score
        assert fitted.score(XEV, np.r_[YEV[:12], YEV[12:] + 10]) == fitted.score(XEV[:12], YEV[:12]) / 2
    with pytest.raises(ValueError, match="none of the y"):
        fitted.score(XEV, YEV + 10)
    np.testing.assert_allclose(fitted.predict_proba(XEV).sum(axis=1), 1.0)
    assert fitted.predict(XEV.astype(np.float32)).shape == (24,)
    big = _clf(max_iter=10**12)  # clamped to the core's C int, not an OverflowError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big.fit(XTR, YTR)
    assert big.predict(XEV).shape == (24,)


PREDICTOR_FILES = [
    ("missing.npz", (FileNotFoundError, "")),
    ("truncated.npz", (ValueError, "corrupt or truncated")),
    ("empty.npz", (ValueError, "corrupt or truncated")),
    ("model-truncated.npz", (ValueError, "corrupt or truncated")),
    ("train.npz", (ValueError, "not an iis InterpretablePredictor file")),
    ("library.npz", (ValueError, "not an iis InterpretablePredictor file")),
    ("random.npz", (ValueError, "npz|archive|corrupt")),
    ("array.npy", (ValueError, "npz|archive|corrupt")),
]


@pytest.mark.parametrize("name", [c[0] for c in PREDICTOR_FILES])
def test_predictor_load_refuses_bad_files(files, name):
    outcome = dict(PREDICTOR_FILES)[name]
    expect(lambda: iis.InterpretablePredictor.load(files[name]), outcome)


# ============================================================================= CLI
def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def _score_argv(files, train="train.npz", eval_="eval.npz", library="prototype:10", *extra):
    return ["score", "--train", files.get(train, train), "--eval", files.get(eval_, eval_),
            "--library", files.get(library, library), "--sparsities", "0,0.5", "--n-threads", "1",
            "--quiet", *extra]


CLI_SCORE = [
    # (id, train, eval, library, extra args, stderr regex)
    ("train-missing", "missing.npz", "eval.npz", "prototype:10", [], "does not exist"),
    ("train-truncated", "truncated.npz", "eval.npz", "prototype:10", [], "not an .npz archive"),
    ("train-truncated-head", "truncated-head.npz", "eval.npz", "prototype:10", [], "not an .npz archive"),
    ("train-empty-file", "empty.npz", "eval.npz", "prototype:10", [], "not an .npz archive"),
    ("train-random-bytes", "random.npz", "eval.npz", "prototype:10", [], "not an .npz archive"),
    ("train-text", "text.npz", "eval.npz", "prototype:10", [], "not an .npz archive"),
    ("train-npy", "array.npy", "eval.npz", "prototype:10", [], "not an .npz archive"),
    ("train-folder", "folder.npz", "eval.npz", "prototype:10", [], "not a readable|Is a directory|directory"),
    ("train-bitflip", "bitflip.npz", "eval.npz", "prototype:10", [], "CRC|not a readable"),
    ("train-no-features", "no-features.npz", "eval.npz", "prototype:10", [], "no 'features' array"),
    ("train-no-labels", "no-labels.npz", "eval.npz", "prototype:10", [], "no 'labels' array"),
    ("train-object", "object.npz", "eval.npz", "prototype:10", [], "object arrays"),
    ("train-nan", "nan.npz", "eval.npz", "prototype:10", [], "NaN or Inf"),
    ("train-huge", "huge.npz", "eval.npz", "prototype:10", [], "rescale"),
    ("train-1d", "1d.npz", "eval.npz", "prototype:10", [], "2-D"),
    ("train-3d", "3d.npz", "eval.npz", "prototype:10", [], "2-D"),
    ("train-int", "int-features.npz", "eval.npz", "prototype:10", [], "float32 or float64"),
    ("train-str", "str-features.npz", "eval.npz", "prototype:10", [], "float32 or float64"),
    ("train-complex", "complex-features.npz", "eval.npz", "prototype:10", [], "float32 or float64"),
    ("train-empty", "empty-features.npz", "eval.npz", "prototype:10", [], "empty"),
    ("train-labels-2d", "labels-2d.npz", "eval.npz", "prototype:10", [], "1-D"),
    ("train-labels-nan", "labels-nan.npz", "eval.npz", "prototype:10", [], "NaN"),
    ("train-labels-short", "labels-short.npz", "eval.npz", "prototype:10", [], "47 entries for 48|47 entries but"),
    ("train-one-class", "one-class.npz", "eval.npz", "cluster:3", [], "at least 2|none of the eval_labels"),
    ("eval-truncated", "train.npz", "truncated.npz", "prototype:10", [], "eval file .* not an .npz archive"),
    ("eval-inf", "train.npz", "inf-eval.npz", "prototype:10", [], "eval_features contains NaN or Inf"),
    ("eval-d", "train.npz", "eval-d5.npz", "prototype:10", [], "d=6 but eval_features have d=5"),
    ("eval-unseen", "train.npz", "eval-unseen.npz", "prototype:10", [], "none of the eval_labels"),
    ("library-spec", "train.npz", "eval.npz", "foo:3", [], "--library must be"),
    ("library-count-word", "train.npz", "eval.npz", "prototype:x", [], "must be an integer"),
    ("library-count-float", "train.npz", "eval.npz", "prototype:3.5", [], "must be an integer"),
    ("library-count-0", "train.npz", "eval.npz", "prototype:0", [], "n_concepts must be >= 1"),
    ("library-count-negative", "train.npz", "eval.npz", "cluster:-3", [], "n_concepts must be >= 1"),
    ("library-more-than-elements", "train.npz", "eval.npz", "prototype:1000", [], "exceeds the 48"),
    ("library-missing-file", "train.npz", "eval.npz", "missing.npz", [], "No such file"),
    ("library-empty-file-spec", "train.npz", "eval.npz", "file:", [], "No such file|not an .npz"),
    ("library-truncated", "train.npz", "eval.npz", "library-truncated.npz", [], "not an .npz archive|corrupt"),
    ("library-random", "train.npz", "eval.npz", "random.npz", [], "not an .npz archive"),
    ("library-not-a-library", "train.npz", "eval.npz", "train.npz", [], "no 'vectors' array"),
    ("library-d", "train.npz", "eval.npz", "library-d4.npz", [], "d=6 but the concept library has d=4"),
    ("library-zero-row", "train.npz", "eval.npz", "library-zero-row.npz", [], "zero norm"),
    ("elements-truncated", "train.npz", "eval.npz", "prototype:5", ["--elements", "truncated.npz"],
     "elements file .* not an .npz archive"),
    ("elements-no-labels", "train.npz", "eval.npz", "prototype:5", ["--elements", "no-labels.npz"], "no 'labels'"),
    ("sparsities-words", "train.npz", "eval.npz", "prototype:5", ["--sparsities", "a,b"], "comma-separated"),
    ("sparsities-range", "train.npz", "eval.npz", "prototype:5", ["--sparsities", "0,1.5"], r"\[0, 1\)"),
    ("sparsities-one", "train.npz", "eval.npz", "prototype:5", ["--sparsities", "0.5"], "at least 2"),
    ("sparsities-nan", "train.npz", "eval.npz", "prototype:5", ["--sparsities", "0,nan"], r"\[0, 1\)"),
    ("threads-0", "train.npz", "eval.npz", "prototype:5", ["--n-threads", "0"], "n_threads"),
    ("tol-0", "train.npz", "eval.npz", "prototype:5", ["--tol", "0"], "tol must be > 0"),
    ("max-iter-0", "train.npz", "eval.npz", "prototype:5", ["--max-iter", "0"], "max_iter must be > 0"),
    ("l2-negative", "train.npz", "eval.npz", "prototype:5", ["--l2", "-1"], "l2 must be >= 0"),
    ("l2-nan", "train.npz", "eval.npz", "prototype:5", ["--l2", "nan"], "l2 must be >= 0"),
    ("seed-negative", "train.npz", "eval.npz", "prototype:5", ["--seed", "-1"], "non-negative"),
    ("out-in-missing-folder", "train.npz", "eval.npz", "prototype:5", ["--out", "/nonexistent-dir/x.json"],
     "No such file"),
]


@pytest.mark.parametrize("case", [c[0] for c in CLI_SCORE])
def test_cli_score_refuses_bad_input(files, case):
    _, train, eval_, library, extra, pattern = {c[0]: c for c in CLI_SCORE}[case]
    rc, out, err = _cli(*_score_argv(files, train, eval_, library, *[files.get(a, a) for a in extra]))
    assert rc == 2, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("iis: error: "), err
    assert __import__("re").search(pattern, last), last
    assert "Traceback" not in err


CLI_ARGPARSE = [
    ("no-command", []),
    ("unknown-command", ["bogus"]),
    ("score-no-args", ["score"]),
    ("unknown-option", ["score", "--train", "a", "--eval", "b", "--bogus"]),
    ("threads-word", ["score", "--train", "a", "--eval", "b", "--n-threads", "x"]),
    ("threads-old-name", ["score", "--train", "a", "--eval", "b", "--threads", "1"]),
    ("tol-word", ["score", "--train", "a", "--eval", "b", "--tol", "x"]),
    ("max-iter-float", ["score", "--train", "a", "--eval", "b", "--max-iter", "1.5"]),
    ("normalize", ["score", "--train", "a", "--eval", "b", "--normalize", "zscore"]),
    ("mask", ["score", "--train", "a", "--eval", "b", "--mask", "x"]),
    ("keep", ["score", "--train", "a", "--eval", "b", "--keep", "x"]),
    ("l2-word", ["score", "--train", "a", "--eval", "b", "--l2", "x"]),
    ("sparsities-missing-value", ["score", "--train", "a", "--eval", "b", "--sparsities"]),
    ("explain-no-args", ["explain"]),
    ("explain-top-word", ["explain", "--model", "a", "--features", "b", "--top", "x"]),
]


@pytest.mark.parametrize("case", [c[0] for c in CLI_ARGPARSE])
def test_cli_refuses_bad_arguments(case):
    rc, out, err = _cli(*dict(CLI_ARGPARSE)[case])
    assert rc == 2
    assert "Traceback" not in err


CLI_EXPLAIN = [
    # (id, model, features, extra, stderr regex)
    ("model-missing", "missing.npz", "train.npz", [], "No such file"),
    ("model-truncated", "model-truncated.npz", "train.npz", [], "corrupt or truncated"),
    ("model-not-a-model", "library.npz", "train.npz", [], "not an iis InterpretablePredictor"),
    ("features-missing", "model.npz", "missing.npz", [], "does not exist"),
    ("features-truncated", "model.npz", "truncated.npz", [], "not a readable"),
    ("features-nan", "model.npz", "nan.npz", [], "NaN or Inf"),
    ("features-d", "model.npz", "eval-d5.npz", [], "5 features but the predictor was fitted on 6"),
    ("features-1d", "model.npz", "1d.npz", [], "2-D"),
    ("features-str", "model.npz", "str-features.npz", [], "float32 or float64"),
    ("features-object", "model.npz", "object.npz", [], "object arrays"),
    ("rows-word", "model.npz", "train.npz", ["--rows", "a"], "--rows must be"),
    ("rows-empty-range", "model.npz", "train.npz", ["--rows", "5:2"], "selects no row"),
    ("rows-out-of-range", "model.npz", "train.npz", ["--rows", "100"], "outside the 48 rows"),
    ("top-0", "model.npz", "train.npz", ["--top", "0"], "--top must be >= 1"),
]


@pytest.mark.parametrize("case", [c[0] for c in CLI_EXPLAIN])
def test_cli_explain_refuses_bad_input(files, case):
    _, model, feats, extra, pattern = {c[0]: c for c in CLI_EXPLAIN}[case]
    rc, out, err = _cli("explain", "--model", files[model], "--features", files[feats], *extra)
    assert rc == 2, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("iis: error: ") and __import__("re").search(pattern, last), err
    assert "Traceback" not in err


def test_cli_good_run_and_unchanged_files(files, tmp_path):
    before = {k: _read(v) for k, v in files.items() if os.path.isfile(v)}
    rc, out, err = _cli(*_score_argv(files, "train.npz", "eval.npz", "library.npz", "--out", tmp_path / "r.json"))
    assert rc == 0, err
    assert "IISResult(iis=" in out and (tmp_path / "r.json").exists()
    rc, out, err = _cli("explain", "--model", files["model.npz"], "--features", files["eval.npz"], "--rows", "0:2")
    assert rc == 0, err
    assert {k: _read(v) for k, v in files.items() if os.path.isfile(v)} == before


def test_cli_subprocess_reports_errors_without_traceback(files):
    """As a new user runs it: ``python -m iis`` exits 2 with one error line, never a traceback."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(iis.__file__))] + sys.path))
    for argv in (_score_argv(files, "truncated.npz"), _score_argv(files, "train.npz", "eval.npz", "missing.npz"),
                 ["explain", "--model", files["model-truncated.npz"], "--features", files["train.npz"]]):
        p = subprocess.run([sys.executable, "-m", "iis", *argv], capture_output=True, text=True, env=env,
                           timeout=300)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr and "iis: error:" in p.stderr, p.stderr


# ============================================================================= the private kernels
def test_core_kernels_never_crash_on_random_arguments():
    """``iis._core`` checks its arguments itself (module.c) so that no call can crash the
    interpreter: random shapes, dtypes, layouts, NaN/Inf, out-of-range k, labels and
    options give a result or TypeError/ValueError/MemoryError/OverflowError. Under the
    sanitized build (tests/test_sanitizers.py) this also proves the absence of memory
    errors, undefined behaviour and leaks on those paths."""
    from iis import _core

    rng = np.random.default_rng(7)
    allowed = (TypeError, ValueError, MemoryError, OverflowError)
    n_calls = 0

    def layout(x):
        r = rng.random()
        if x.ndim == 2 and r < 0.2:
            wide = np.zeros((x.shape[0] * 2, x.shape[1] + 3), x.dtype)
            wide[::2, 1:1 + x.shape[1]] = x
            return wide[::2, 1:1 + x.shape[1]]
        if r < 0.3:
            return np.asfortranarray(x)
        if r < 0.35:
            return x[::-1]
        if r < 0.4 and x.size:
            return _unaligned(x).astype(x.dtype, copy=False) if x.dtype == np.float64 else x
        if r < 0.45:
            return x.astype(x.dtype.newbyteorder(">"))
        return x

    def vals(shape, dt):
        x = rng.normal(size=shape) * 10.0 ** int(rng.integers(-3, 4))
        r = rng.random()
        if r < 0.1:
            x = np.round(x)
        elif r < 0.15:
            x[...] = 0
        elif r < 0.2 and x.size:
            x.flat[rng.integers(x.size)] = rng.choice([np.nan, np.inf, -np.inf])
        with np.errstate(invalid="ignore"):  # NaN cast to int64
            return x.astype(dt)

    def call(f, *args):
        nonlocal n_calls
        n_calls += 1
        try:
            f(*args)
        except allowed:
            pass

    for _ in range(60):
        dt = rng.choice([np.float32, np.float64, np.int64]) if rng.random() < 0.9 else np.complex128
        n, m, d = (int(rng.choice(v)) for v in ([0, 1, 2, 17, 64], [0, 1, 3, 8, 33], [1, 2, 5, 16]))
        # (a huge K is left to the allocation-failure probes of test_sanitizers.py, which bound
        # the address space: with overcommit a 500 GB W could be mapped, then touched)
        K, nt = int(rng.choice([0, 1, 2, 5])), int(rng.choice([1, 2, -1, 100000]))
        f, p, a = layout(vals((n, d), dt)), layout(vals((m, d), dt)), layout(vals((n, m), dt))
        call(_core.project, f, p, int(rng.integers(-1, 4)), layout(vals(m, dt)), layout(vals(m, dt)), nt)
        call(_core.colstats, a, nt)
        call(_core.topk, a, int(rng.integers(-1, m + 2)), int(rng.integers(2)), int(rng.integers(2)), nt)
        call(_core.keep_count, int(rng.integers(-2, 50)), float(rng.choice([-0.5, 0, 0.5, 1, np.nan])), True)
        y = rng.integers(-1, max(K, 1) + 1, n).astype(np.int32)
        call(_core.logreg_fit, f, None, None, 0, y, K, float(rng.choice([0, 1e-3, -1, np.nan])), 1e-4,
             int(rng.integers(-1, 20)), vals((d, max(K, 1)), dt), vals(K, dt), None, None, nt)
        idx = layout(rng.integers(-1, m + 1, size=(n, min(m, 3))).astype(np.int32))
        call(_core.logreg_fit, None, idx, layout(vals(idx.shape, dt)), int(rng.integers(-1, m + 2)), y, K, 1e-3,
             1e-4, 5, vals((m, 2), dt), vals(2, dt), None, None, nt)
        call(_core.logreg_predict, None, idx, vals(idx.shape, dt), m, vals((m, 2), dt), vals(2, dt), None, None,
             nt)
        call(_core.logreg_precond, f, layout(vals(d, dt)), layout(vals(int(rng.choice([d, d + 1])), dt)),
             float(rng.choice([0, 1e-3, -1, np.nan])), nt)
        s = np.sort(rng.choice([0.0, 0.5, 0.9, 0.999, 1.0, -0.1, np.nan], size=int(rng.integers(0, 4))))
        call(_core.path, a, y, layout(vals((int(rng.choice([0, 1, 9])), m), dt)), y[:9], K, s, 0, 1, 1e-3, 1e-4, 5,
             nt, None)
        call(_core.kmeans, f, int(rng.integers(-1, n + 2)), 0, int(rng.integers(-1, 5)),
             float(rng.choice([0, 1e-4, -1, np.nan])), nt)
        c = int(rng.choice([0, 1, 3]))
        call(_core.text_objective, f, layout(vals((n, c), dt)), vals((c, d), dt), nt)
        call(_core.text_fit, f, vals((n, c), dt), vals((2, d), dt), vals((2, c), dt), c, None,
             int(rng.integers(-1, 4)), int(rng.integers(0, 3)), int(rng.integers(0, 3)), 1e-2, 0.9, 0.999, 1e-8, 0,
             nt, None)
        call(_core.trapezoid, vals(4, np.float64), vals(int(rng.choice([3, 4])), np.float64))
        call(_core.accuracy, y, layout(y.copy()))
    assert n_calls == 60 * 14
