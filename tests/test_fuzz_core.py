"""Fuzz every ``iis._core`` entry point (hypothesis): arbitrary shapes, dtypes, strides,
byte orders and values (NaN, Inf, huge, subnormal, out-of-range indices and labels).

The rule: a clear Python exception (TypeError, ValueError, MemoryError, OverflowError)
or a right answer, checked against NumPy where a call succeeds. Bounded for CI (about
a minute in all, ``FUZZ_EXAMPLES`` examples per entry point); tests/test_sanitizers.py
runs this file under ASan/UBSan. ``IIS_FUZZ_EXAMPLES=5000`` gives a long run.
"""
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from iis import _core  # noqa: E402
from iis import _reference as ref  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("IIS_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ALLOWED = (TypeError, ValueError, MemoryError, OverflowError)
DTYPES = [np.float32, np.float64, np.int32, np.int64, np.bool_, np.complex128]
SPECIAL = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e300, -1e38, 5e-324, 1.0]
KERNELS = st.sampled_from(["auto", "blas"])
THREADS = st.sampled_from([1, 2, -1, 0, 100000])


def _layout(x, how):
    """x in one of several memory layouts (the same values)."""
    if how == "fortran":
        return np.asfortranarray(x)
    if how == "strided" and x.ndim == 2:
        wide = np.zeros((x.shape[0] * 2, x.shape[1] + 3), x.dtype)
        wide[::2, 1:1 + x.shape[1]] = x
        return wide[::2, 1:1 + x.shape[1]]
    if how == "reversed":
        return x[::-1]
    if how == "swapped":
        return x.astype(x.dtype.newbyteorder(">"))
    if how == "readonly":
        x = x.copy()
        x.flags.writeable = False
        return x
    return x


@st.composite
def arrays(draw, ndim=2, rows=(0, 7), cols=(0, 6), dtypes=DTYPES, shape=None, finite=False):
    """An array of a drawn (or given) shape, dtype, layout and values, or now and then
    something that is not an array at all."""
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from([None, 3, "x", [1.0, 2.0], [[1.0]]]))
    if shape is None:
        shape = tuple(draw(st.integers(*rows)) for _ in range(1)) + (
            (draw(st.integers(*cols)),) if ndim == 2 else ())
    elems = st.floats(-1e6, 1e6) if finite else st.one_of(st.floats(-1e6, 1e6), st.sampled_from(SPECIAL))
    x = draw(hnp.arrays(np.float64, shape, elements=elems))
    dt = draw(st.sampled_from(dtypes))
    with np.errstate(all="ignore"):
        x = x.astype(dt)
    return _layout(x, draw(st.sampled_from(["c", "c", "fortran", "strided", "reversed", "swapped", "readonly"])))


def labels(n, k):
    return hnp.arrays(np.int32, n, elements=st.integers(-2, max(k, 1) + 1))


def call(f, *args, **kw):
    """f(*args, **kw), or None when it raised an allowed exception."""
    try:
        return f(*args, **kw)
    except ALLOWED:
        return None


def _plain(a):
    return isinstance(a, np.ndarray) and a.dtype in (np.float32, np.float64) and a.dtype.isnative


@FUZZ
@given(st.data())
def test_fuzz_project(data):
    f, p = data.draw(arrays()), data.draw(arrays())
    norm = data.draw(st.integers(-1, 3))
    mean, std = data.draw(arrays(ndim=1)), data.draw(arrays(ndim=1))
    out = call(_core.project, f, p, norm=norm, mean=mean, std=std, n_threads=data.draw(THREADS), check=True,
               kernels=data.draw(KERNELS))
    if out is None:
        return
    a, absmax = out
    assert a.shape == (f.shape[0], p.shape[0]) and a.dtype == f.dtype
    fin = np.isfinite(f).all() and np.isfinite(p).all()
    if fin and f.size:
        assert absmax == np.abs(f).max()
    if norm == 0 and fin and f.size and np.abs(f).max() < 1e6 and np.abs(p).max() < 1e6:
        want = f.astype(np.float64) @ p.astype(np.float64).T
        scale = np.abs(f).astype(np.float64) @ np.abs(p).astype(np.float64).T
        eps = np.finfo(f.dtype).eps
        assert np.all(np.abs(a - want) <= 2 * f.shape[1] * eps * scale + 1e-30)


@FUZZ
@given(st.data())
def test_fuzz_colstats_and_topk(data):
    a = data.draw(arrays())
    out = call(_core.colstats, a, n_threads=data.draw(THREADS))
    if out is not None and np.isfinite(a).all() and np.abs(a).max(initial=0) < 1e6:
        mean, std = out
        np.testing.assert_allclose(mean, a.astype(np.float64).mean(0), rtol=1e-4, atol=1e-3)
    k = data.draw(st.integers(-2, 9))
    soft, dense = data.draw(st.booleans()), data.draw(st.booleans())
    out = call(_core.topk, a, k, soft=soft, dense=dense, n_threads=data.draw(THREADS), kernels=data.draw(KERNELS))
    if out is None:
        return
    assert _plain(a) and 0 <= k <= a.shape[1]
    kept = ref.mask(a, k, soft) if np.isfinite(a).all() and a.shape[0] else None
    if dense:
        assert out.shape == a.shape
        assert ((out == 0) | np.isnan(out) | (out == a) | soft).all()
        if kept is not None:
            np.testing.assert_allclose(out, kept, rtol=4 * np.finfo(a.dtype).eps, atol=0)
    else:
        idx, val = out
        assert idx.shape == (a.shape[0], k) and ((idx >= 0) & (idx < max(a.shape[1], 1))).all()
        assert (np.diff(idx, axis=1) > 0).all()  # ascending and distinct
        if kept is not None:
            np.testing.assert_array_equal(idx, ref.topk_index(a, k))


@FUZZ
@given(st.data())
def test_fuzz_keep_count_trapezoid_accuracy(data):
    m = data.draw(st.integers(-3, 300))
    s = data.draw(st.one_of(st.floats(-1, 2), st.sampled_from([np.nan, np.inf])))
    pub = data.draw(st.booleans())
    k = call(_core.keep_count, m, s, published=pub)
    if k is not None:
        assert k == ref.keep_count(m, s, pub)
    sv, av = data.draw(arrays(ndim=1, dtypes=[np.float64, np.float32])), data.draw(
        arrays(ndim=1, dtypes=[np.float64, np.float32]))
    t = call(_core.trapezoid, sv, arr=av)
    if t is not None and np.isfinite(sv).all() and np.isfinite(av).all() and np.abs(sv).max(initial=0) < 1e6:
        assert abs(t - ref.trapezoid(sv, av)) <= 1e-9 * max(1.0, np.abs(av).max(initial=0) * (np.ptp(sv) if sv.size else 0))
    n = data.draw(st.integers(0, 6))
    p, y = data.draw(labels(n, 3)), data.draw(labels(data.draw(st.sampled_from([n, n + 1])), 3))
    acc = call(_core.accuracy, data.draw(st.sampled_from([p, p.astype(np.int64), p[::-1]])), y)
    if acc is not None and len(p) == len(y) and n:
        assert acc == pytest.approx(np.mean(p == y))


@st.composite
def designs(draw):
    """(X, idx, val, d) of a dense or an ELL design, with bad entries now and then."""
    if draw(st.booleans()):
        return draw(arrays(rows=(0, 9))), None, None, 0
    n, k = draw(st.integers(0, 8)), draw(st.integers(0, 4))
    d = draw(st.integers(-1, 7))
    idx = draw(hnp.arrays(np.int32, (n, k), elements=st.integers(-2, 8)))
    if draw(st.booleans()):
        idx = np.sort(np.abs(idx), axis=1)
    idx = _layout(idx, draw(st.sampled_from(["c", "c", "fortran", "reversed", "swapped"])))
    return None, idx, draw(arrays(shape=(n, k))), d


def _rows(X, idx):
    return (X if X is not None else idx).shape[0] if isinstance(X if X is not None else idx, np.ndarray) else 0


@FUZZ
@given(st.data())
def test_fuzz_logreg_fit_predict_objective(data):
    X, idx, val, d = data.draw(designs())
    n = _rows(X, idx)
    K = data.draw(st.integers(-1, 4))
    y = data.draw(labels(n, K))
    cols = X.shape[1] if isinstance(X, np.ndarray) and X.ndim == 2 else d
    w0 = data.draw(st.one_of(st.none(), arrays(shape=(max(cols, 0), max(K, 1)))))
    b0 = None if w0 is None else data.draw(arrays(ndim=1, shape=(max(K, 1),)))
    mu = data.draw(st.one_of(st.none(), arrays(ndim=1, shape=(max(cols, 0),))))
    sigma = None if mu is None else data.draw(arrays(ndim=1, shape=(max(cols, 0),)))
    kw = dict(n_threads=data.draw(THREADS), kernels=data.draw(KERNELS))
    l2 = data.draw(st.sampled_from([0.0, 1e-3, -1.0, np.nan, 1.0]))
    out = call(_core.logreg_fit, X, idx=idx, val=val, d=d, y=y, n_classes=K, l2=l2,
               tol=data.draw(st.sampled_from([1e-4, 0.0, -1.0, np.nan])), max_iter=data.draw(st.integers(-1, 15)),
               w0=w0, b0=b0, mu=mu, sigma=sigma, precondition=data.draw(st.integers(-1, 3)), **kw)
    if out is not None:
        w, b, it, conv, loss, gmax, stop = out
        assert w.shape == (cols, K) and b.shape == (K,) and 0 <= stop <= 4 and conv == (stop == 0)
        assert isinstance(idx, np.ndarray) or X is not None
        if idx is not None:
            assert ((idx >= 0) & (idx < d)).all()
        assert ((y >= 0) & (y < K)).all()
    W, B = data.draw(arrays(shape=(max(cols, 0), max(K, 1)))), data.draw(arrays(ndim=1, shape=(max(K, 1),)))
    out = call(_core.logreg_predict, X, idx=idx, val=val, d=d, w=W, b=B, mu=mu, sigma=sigma, **kw)
    if out is not None:
        logits, pred = out
        assert logits.shape == (n, W.shape[1]) and ((pred >= 0) & (pred < W.shape[1])).all()
        if X is not None and mu is None and np.isfinite(X).all() and np.isfinite(W).all() and np.isfinite(B).all() \
                and np.abs(X).max(initial=0) < 1e6 and np.abs(W).max(initial=0) < 1e6 and np.abs(B).max(initial=0) < 1e6:
            want = X.astype(np.float64) @ W + B
            scale = np.abs(X).astype(np.float64) @ np.abs(W) + np.abs(B)
            assert np.all(np.abs(logits - want) <= 4 * (cols + 1) * np.finfo(X.dtype).eps * scale + 1e-30)
    out = call(_core.logreg_objective, X, idx=idx, val=val, d=d, y=y, n_classes=K, l2=l2, w=W, b=B, mu=mu,
               sigma=sigma, amx=data.draw(st.integers(-1, 3)), **kw)
    if out is not None:
        f, g = out
        assert g.shape == (W.size + B.size,)


@FUZZ
@given(st.data())
def test_fuzz_precond_and_path(data):
    X = data.draw(arrays(rows=(0, 9)))
    cols = X.shape[1] if isinstance(X, np.ndarray) and X.ndim == 2 else 0
    mu = data.draw(st.one_of(st.none(), arrays(ndim=1, shape=(cols,))))
    sg = None if mu is None else data.draw(arrays(ndim=1, shape=(cols + data.draw(st.integers(0, 1)),)))
    P = call(_core.logreg_precond, X, mu=mu, sigma=sg, l2=data.draw(st.sampled_from([0.0, 1e-3, -1.0, np.nan])),
             n_threads=data.draw(THREADS), amx=data.draw(st.booleans()), kernels=data.draw(KERNELS))
    if P is not None:
        assert P.shape == (cols + 1, cols + 1)
    atr, aev = data.draw(arrays(rows=(0, 9))), data.draw(arrays(rows=(0, 5)))
    K = data.draw(st.integers(-1, 3))
    ntr = atr.shape[0] if isinstance(atr, np.ndarray) else 0
    nev = aev.shape[0] if isinstance(aev, np.ndarray) else 0
    s = data.draw(hnp.arrays(np.float64, data.draw(st.integers(0, 4)),
                             elements=st.sampled_from([0.0, 0.3, 0.5, 0.9, 0.999, 1.0, -0.1, np.nan])))
    if data.draw(st.booleans()):
        s = np.sort(s)
    ytr, yev = data.draw(labels(ntr, K)), data.draw(labels(nev + data.draw(st.integers(0, 1)), K))
    logits = data.draw(st.one_of(st.none(), arrays(shape=(ntr, max(K, 1)))))
    own = data.draw(st.booleans())
    out = call(_core.path, atr.copy() if own and isinstance(atr, np.ndarray) else atr, ytr,
               aev.copy() if own and isinstance(aev, np.ndarray) else aev, yev, n_classes=K, sparsities=s,
               soft=data.draw(st.booleans()), published=data.draw(st.booleans()), l2=1e-3, tol=1e-4,
               max_iter=data.draw(st.integers(0, 8)), n_threads=data.draw(THREADS), overwrite=own,
               precondition=data.draw(st.integers(0, 2)), train_logits0=logits, kernels=data.draw(KERNELS))
    if out is not None:
        acc, kept, it, conv, stop = out
        m = atr.shape[1]
        assert list(kept) == [ref.keep_count(m, v) for v in s]
        assert ((acc >= 0) & (acc <= 1)).all() and ((stop >= 0) & (stop <= 4)).all()


@FUZZ
@given(st.data())
def test_fuzz_kmeans_and_text(data):
    X = data.draw(arrays(rows=(0, 9)))
    n = X.shape[0] if isinstance(X, np.ndarray) else 0
    k = data.draw(st.integers(-1, 10))
    out = call(_core.kmeans, X, k, seed=data.draw(st.integers(0, 2**64 - 1)), max_iter=data.draw(st.integers(-1, 5)),
               tol=data.draw(st.sampled_from([0.0, 1e-4, -1.0, np.nan])), n_threads=data.draw(THREADS))
    if out is not None:
        centers, lab, inertia, it = out
        assert centers.shape == (k, X.shape[1]) and ((lab >= 0) & (lab < k)).all() and len(lab) == n
    c = data.draw(st.integers(0, 3))
    T, W = data.draw(arrays(shape=(n, c))), data.draw(arrays(shape=(c, X.shape[1] if isinstance(X, np.ndarray)
                                                                   and X.ndim == 2 else 1)))
    out = call(_core.text_objective, X, T, W, n_threads=data.draw(THREADS))
    if out is not None:
        sim, J, grad = out
        assert sim.shape == (c,) and grad.shape == W.shape
    out = call(_core.text_fit, X, T, data.draw(arrays(rows=(0, 4))), data.draw(arrays(rows=(0, 4))), n_concepts=c,
               steps=data.draw(st.integers(-1, 4)), eval_every=data.draw(st.integers(0, 2)),
               patience=data.draw(st.integers(0, 2)), lr=data.draw(st.sampled_from([1e-2, 0.0, -1.0, np.nan])),
               n_threads=data.draw(THREADS))
    if out is not None:
        assert out[0].shape == (c, X.shape[1])
