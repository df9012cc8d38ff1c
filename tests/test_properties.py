"""Property tests (hypothesis): every C kernel against its NumPy reference (iis/_reference.py)
over generated inputs: shapes from 1 upwards, float32 and float64, many exact ties, zero
rows and constant columns, k = 0 and k = M, row-strided layouts.

Example counts are modest (100 per property, 50 where each example runs a solver;
derandomised, no example database) so the suite stays fast and the same examples run in
CI and here.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from iis import _core
from iis import _reference as ref

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SOLVER_SETTINGS = settings(SETTINGS, max_examples=50)  # each example runs L-BFGS (and SciPy's)
EPS = {np.float32: 1.2e-7, np.float64: 2.3e-16}


# ----------------------------------------------------------------------------- strategies
# zero or a magnitude in [1e-3, 10]: no values whose squares underflow
_FLOATS = st.one_of(st.just(0.0), st.floats(1e-3, 10.0), st.floats(-10.0, -1e-3))

@st.composite
def matrices(draw, rows=(1, 24), cols=(1, 12), dtype=None, strided=True):
    """A 2-D float array: small integers (many exact ties, zeros, constant columns) or
    floats spanning a few decades; C-contiguous or row-strided (a view of a wider array)."""
    dt = draw(st.sampled_from([np.float32, np.float64])) if dtype is None else dtype
    n, m = draw(st.integers(*rows)), draw(st.integers(*cols))
    if draw(st.booleans()):
        x = draw(hnp.arrays(np.int8, (n, m), elements=st.integers(-3, 3))).astype(dt)
    else:
        scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
        x = draw(hnp.arrays(np.float64, (n, m), elements=_FLOATS)) * scale
        x = x.astype(dt)
    if strided and draw(st.booleans()):
        wide = np.zeros((n, m + draw(st.integers(1, 3))), dt)
        wide[:, :m] = x
        x = wide[:, :m]  # rows are contiguous, the leading dimension is larger
    return x


def _tol(dt, scale=1.0):
    return dict(rtol=400 * EPS[dt], atol=400 * EPS[dt] * scale)


def _nonzero_rows(p):
    return np.all(np.abs(p).max(axis=1) > 0)


def _colstats_expected(a):
    """ref.colstats, with the convention of the kernel for constant columns (mean = the
    value, std = 1): the reference's two-pass std of a constant 0.1 column is 1e-17."""
    mean, std = ref.colstats(a)
    const = np.all(a == a[:1], axis=0)
    mean = np.where(const, np.asarray(a, np.float64)[0], mean)
    return mean, np.where(const, 1.0, std)


# ----------------------------------------------------------------------------- projection
@SETTINGS
@given(data=st.data())
def test_project_matches_reference(data):
    f = data.draw(matrices())
    dt = f.dtype.type
    p = data.draw(matrices(rows=(1, 10), cols=(f.shape[1], f.shape[1]), dtype=dt, strided=False))
    assume(_nonzero_rows(p))
    u = np.ascontiguousarray(ref.unit(p), dtype=dt)
    raw = _core.project(f, u, norm=0, n_threads=1)
    scale = float(np.abs(f).max()) * math.sqrt(f.shape[1]) + 1.0
    np.testing.assert_allclose(raw, ref.project(f, p, "none"), **_tol(dt, scale))
    # normalisations, checked on the kernel's own raw activations (float64 reference)
    # (an ulp of error in a row's mean is divided by sqrt(var + 1e-5) >= 0.003)
    ln = _core.project(f, u, norm=1, n_threads=1)
    np.testing.assert_allclose(ln, ref.project(raw.astype(np.float64), np.eye(raw.shape[1]), "layernorm"),
                               rtol=400 * EPS[dt], atol=50 * EPS[dt] * (np.abs(raw).max() / math.sqrt(1e-5) + 1))
    mean, std = _core.colstats(raw, n_threads=1)
    rmean, rstd = _colstats_expected(raw)
    np.testing.assert_allclose(mean, rmean, **_tol(dt, scale))
    np.testing.assert_allclose(std, rstd, rtol=1e3 * EPS[dt] * (1 + np.abs(rmean) / rstd).max(),
                               atol=1e3 * EPS[dt] * scale)
    z = _core.project(f, u, norm=2, mean=mean, std=std, n_threads=1)
    np.testing.assert_allclose(z, (raw - mean) / std, **_tol(dt, 10.0))


@SETTINGS
@given(a=matrices(rows=(1, 40)))
def test_colstats_matches_reference(a):
    mean, std = _core.colstats(a, n_threads=1)
    rmean, rstd = _colstats_expected(a)
    dt = a.dtype.type
    scale = float(np.abs(a).max()) + 1e-30
    np.testing.assert_allclose(mean, rmean, rtol=10 * EPS[dt], atol=10 * EPS[dt] * scale)
    np.testing.assert_allclose(std, rstd, rtol=1e3 * EPS[dt] * (1 + np.abs(rmean) / rstd).max(),
                               atol=10 * EPS[dt] * scale)
    const = np.all(a == a[:1], axis=0)
    assert np.all(std[const] == 1) and np.all(((a - mean) / std)[:, const] == 0)


# ----------------------------------------------------------------------------- masks
@SETTINGS
@given(m=st.integers(0, 5000), s=st.floats(0.0, 1.0, exclude_max=True), published=st.booleans())
def test_keep_count_matches_reference(m, s, published):
    k = _core.keep_count(m, s, published=published)
    assert k == ref.keep_count(m, s, published)
    assert 0 <= k <= m


@SETTINGS
@given(data=st.data())
def test_topk_and_masks_match_reference(data):
    a = data.draw(matrices(rows=(1, 30), cols=(1, 16)))
    m = a.shape[1]
    k = data.draw(st.sampled_from(sorted({0, 1, m // 2, m - 1, m}) if m > 1 else [0, 1]))
    soft = data.draw(st.booleans())
    idx, val = _core.topk(a, k, soft=soft, dense=0, n_threads=1)
    dense = _core.topk(a, k, soft=soft, dense=1, n_threads=1)
    np.testing.assert_array_equal(idx, ref.topk_index(a, k))  # ties: lower index, exactly
    expected = ref.mask(a, k, soft)
    np.testing.assert_allclose(dense, expected, rtol=0, atol=0 if not soft else 4 * EPS[a.dtype.type] * (
        np.abs(a).max() + 1))
    np.testing.assert_array_equal(val, dense[np.arange(a.shape[0])[:, None], idx])
    assert np.all(np.count_nonzero(dense, axis=1) <= k)


# ----------------------------------------------------------------------------- solver
@st.composite
def classification(draw, dense=True):
    dt = draw(st.sampled_from([np.float32, np.float64]))
    n, d, K = draw(st.integers(1, 40)), draw(st.integers(1, 8)), draw(st.integers(1, 4))
    x = draw(matrices(rows=(n, n), cols=(d, d), dtype=dt, strided=dense))
    y = np.asarray(draw(hnp.arrays(np.int32, n, elements=st.integers(0, K - 1))), np.int32)
    l2 = draw(st.sampled_from([1e-2, 1e-1, 1.0]))
    return x, y, K, l2


def _objective_gap(w, b, x, y, l2):
    """f(kernel solution) - f(reference optimum) and the kernel's gradient, in float64."""
    rw, rb = ref.logreg_fit(x, y, w.shape[1], l2, tol=1e-10)
    f_k = ref.logreg_objective(w.astype(np.float64), b.astype(np.float64), x, y, l2)
    f_r = ref.logreg_objective(rw, rb, x, y, l2)
    gw, gb = ref.logreg_gradient(w.astype(np.float64), b.astype(np.float64), np.asarray(x, np.float64), y, l2)
    return f_k - f_r, max(np.abs(gw).max(), np.abs(gb).max())


@SOLVER_SETTINGS
@given(prob=classification())
def test_logreg_dense_matches_reference(prob):
    x, y, K, l2 = prob
    dt = x.dtype.type
    x = x / max(1.0, float(np.abs(x).max()))  # keep the problem well conditioned
    x = x.astype(dt)
    tol = 1e-5 if dt == np.float32 else 1e-9
    w, b, it, conv, loss, gmax, _ = _core.logreg_fit(x, y=y, n_classes=K, l2=l2, tol=tol, max_iter=3000, w0=np.zeros((x.shape[1], K), dt), b0=np.zeros(K, dt), n_threads=1)
    gap, grad = _objective_gap(w, b, x, y, l2)
    # with a class absent from y the bias of that class runs to -inf: the infimum is not
    # attained and both solvers stop on a flat objective
    all_present = len(np.unique(y)) == K
    # float32: L-BFGS stops when the objective, evaluated in float32, no longer decreases
    assert gap <= (1e-4 if dt == np.float32 else 1e-9) * (1 if all_present else 10)
    assert abs(loss - ref.logreg_objective(w.astype(np.float64), b.astype(np.float64), x, y, l2)) <= (
        1e-4 if dt == np.float32 else 1e-9)
    assert conv == (gmax <= tol)
    if dt == np.float64 and all_present:
        assert grad <= 1e-6
    logits, pred = _core.logreg_predict(x, w=w, b=b, n_threads=1)
    np.testing.assert_allclose(logits, np.asarray(x, np.float64) @ w + b, **_tol(dt, 10.0))
    z = logits.astype(np.float64)
    assert np.all(z[np.arange(len(pred)), pred] == z.max(axis=1))
    assert np.all(pred == np.argmax(logits, axis=1))  # ties: the lower class


@SOLVER_SETTINGS
@given(prob=classification(dense=False), data=st.data())
def test_logreg_implicit_standardisation_matches_reference(prob, data):
    x, y, K, l2 = prob
    dt = x.dtype.type
    x = x.astype(np.float64)
    mu, sd = _colstats_expected(x)
    mu, sd = mu.astype(dt), sd.astype(dt)
    w, b, *_ = _core.logreg_fit(x.astype(dt), y=y, n_classes=K, l2=l2, tol=1e-9, max_iter=3000, w0=np.zeros((x.shape[1], K), dt), b0=np.zeros(K, dt), mu=mu, sigma=sd, n_threads=1)
    xs = (x - mu.astype(np.float64)) / sd.astype(np.float64)
    xs = xs / 1.0
    gap, _ = _objective_gap(w, b, xs, y, l2)
    assert gap <= (1e-3 if dt == np.float32 else 1e-8) * (1 + np.abs(xs).max())


@SOLVER_SETTINGS
@given(data=st.data())
def test_logreg_sparse_design_matches_reference(data):
    a = data.draw(matrices(rows=(1, 30), cols=(1, 12), dtype=np.float64, strided=False))
    a = a / max(1.0, float(np.abs(a).max()))
    n, m = a.shape
    K = data.draw(st.integers(1, 4))
    y = np.asarray(data.draw(hnp.arrays(np.int32, n, elements=st.integers(0, K - 1))), np.int32)
    k = data.draw(st.integers(0, m))
    idx, val = _core.topk(a, k, soft=False, dense=0, n_threads=1)
    w, b, it, conv, loss, gmax, _ = _core.logreg_fit(None, idx=idx, val=val, d=m, y=y, n_classes=K, l2=0.1, tol=1e-10, max_iter=3000, w0=np.zeros((m, K)), b0=np.zeros(K), n_threads=1)
    gap, grad = _objective_gap(w, b, ref.mask(a, k), y, 0.1)
    assert gap <= 1e-8
    assert conv == (gmax <= 1e-10)
    if len(np.unique(y)) == K:
        assert grad <= 1e-6
    logits, pred = _core.logreg_predict(None, idx=idx, val=val, d=m, w=w, b=b, n_threads=1)
    np.testing.assert_allclose(logits, ref.mask(a, k) @ w + b, rtol=1e-12, atol=1e-12)


@SOLVER_SETTINGS
@given(data=st.data())
def test_path_equals_its_kernels(data):
    """The sparsity path = mask, fit warm-started along ascending s, predict, accuracy."""
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    atr = data.draw(matrices(rows=(2, 30), cols=(1, 12), dtype=dt, strided=False))
    m = atr.shape[1]
    aev = data.draw(matrices(rows=(1, 15), cols=(m, m), dtype=dt, strided=False))
    K = data.draw(st.integers(1, 3))
    ytr = np.asarray(data.draw(hnp.arrays(np.int32, atr.shape[0], elements=st.integers(0, K - 1))), np.int32)
    yev = np.asarray(data.draw(hnp.arrays(np.int32, aev.shape[0], elements=st.integers(0, K - 1))), np.int32)
    s = np.array(sorted(data.draw(st.sets(st.sampled_from([0.0, 0.1, 0.5, 0.8, 0.95]), min_size=1))))
    soft, published = data.draw(st.booleans()), data.draw(st.booleans())
    acc, kept, n_iter, conv, _ = _core.path(atr, ytr, aev, yev, n_classes=K, sparsities=s, soft=soft, published=published, l2=1e-2, tol=1e-6, max_iter=200, n_threads=1)
    w, b = np.zeros((m, K), dt), np.zeros(K, dt)
    for i, si in enumerate(s):
        k = ref.keep_count(m, si, published)
        assert kept[i] == k
        if 4 * k <= m:  # the path's ELL design
            tr, ev = _core.topk(atr, k, soft=soft, dense=0, n_threads=1), _core.topk(aev, k, soft=soft, dense=0, n_threads=1)
            w, b, *_ = _core.logreg_fit(None, *tr, m, ytr, K, 1e-2, 1e-6, 200, w, b, None, None, 1)
            _, pred = _core.logreg_predict(None, *ev, m, w, b, None, None, 1)
        else:
            tr, ev = _core.topk(atr, k, soft=soft, dense=1, n_threads=1), _core.topk(aev, k, soft=soft, dense=1, n_threads=1)
            w, b, *_ = _core.logreg_fit(tr, y=ytr, n_classes=K, l2=1e-2, tol=1e-6, max_iter=200, w0=w, b0=b, n_threads=1)
            _, pred = _core.logreg_predict(ev, w=w, b=b, n_threads=1)
        assert acc[i] == ref.accuracy(pred, yev)


# ----------------------------------------------------------------------------- k-means
@SOLVER_SETTINGS
@given(data=st.data())
def test_kmeans_matches_reference_assignment(data):
    x = data.draw(matrices(rows=(1, 40), cols=(1, 6), strided=False))
    k = data.draw(st.integers(1, x.shape[0]))
    seed = data.draw(st.integers(0, 2**64 - 1))
    c, lab, inertia, it = _core.kmeans(x, k, seed=seed, max_iter=50, tol=0.0, n_threads=1)
    assert c.shape == (k, x.shape[1]) and np.all(np.isfinite(c))
    _, rd = ref.kmeans_assign(x, c)
    d2 = ((np.asarray(x, np.float64)[:, None, :] - np.asarray(c, np.float64)[None]) ** 2).sum(-1)
    scale = float((np.asarray(x, np.float64) ** 2).sum(axis=1).max()) + 1.0
    # the kernel's label is a nearest centre (up to the rounding of ||x||^2 - 2 x.c + ||c||^2)
    assert np.all(d2[np.arange(len(lab)), lab] <= rd + 1e3 * EPS[x.dtype.type] * scale)
    assert inertia == pytest.approx(d2[np.arange(len(lab)), lab].sum(), rel=1e-3,
                                    abs=1e3 * EPS[x.dtype.type] * scale)
    # the same seed gives the same result, with 1 or 2 threads
    c2, lab2, inertia2, it2 = _core.kmeans(x, k, seed=seed, max_iter=50, tol=0.0, n_threads=2)
    np.testing.assert_array_equal(c, c2)
    assert inertia == inertia2 and it == it2


# ----------------------------------------------------------------------------- curve
@SETTINGS
@given(arr=hnp.arrays(np.float64, st.integers(0, 12), elements=st.floats(0, 2)), data=st.data())
def test_trapezoid_matches_reference(arr, data):
    s = np.sort(np.asarray(data.draw(hnp.arrays(np.float64, arr.size, elements=st.floats(0, 0.999),
                                                unique=True)), np.float64))
    assert _core.trapezoid(s, arr) == pytest.approx(ref.trapezoid(s, arr), rel=1e-12, abs=1e-14)


@SETTINGS
@given(data=st.data())
def test_accuracy_matches_reference(data):
    n = data.draw(st.integers(0, 50))
    p = np.asarray(data.draw(hnp.arrays(np.int32, n, elements=st.integers(-2, 3))), np.int32)
    y = np.asarray(data.draw(hnp.arrays(np.int32, n, elements=st.integers(-2, 3))), np.int32)
    expected = ref.accuracy(p, y) if n else 0.0
    assert _core.accuracy(p, y) == pytest.approx(expected, abs=1e-15)


# ----------------------------------------------------------------------------- text objective
@SETTINGS
@given(data=st.data())
def test_text_objective_matches_reference(data):
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    f = data.draw(matrices(rows=(1, 30), cols=(1, 8), dtype=dt))
    f = (f / max(1.0, float(np.abs(f).max()))).astype(dt)
    c = data.draw(st.integers(1, 5))
    t = data.draw(matrices(rows=(f.shape[0], f.shape[0]), cols=(c, c), dtype=dt))
    w = data.draw(matrices(rows=(c, c), cols=(f.shape[1], f.shape[1]), dtype=dt, strided=False))
    w = np.ascontiguousarray(w / max(1.0, float(np.abs(w).max())), dtype=dt)
    sim, obj, grad = _core.text_objective(f, t, w, n_threads=1)
    # a constant target column carries no signal: the kernel gives it cub = 0 (exactly); the
    # reference's rounded mean turns it into a unit column of noise, so it gets the zero column
    const = np.all(t == t[:1], axis=0)
    rsim, robj, rgrad = ref.text_objective(f, np.where(const, 0.0, np.asarray(t, np.float64)), w)
    assert np.all(sim[const] == 0)
    # a column of F W^T whose spread is at rounding level has sim 0 in one and not the other
    p = np.asarray(f, np.float64) @ np.asarray(w, np.float64).T
    spread = p.std(axis=0) > 1e3 * EPS[dt] * (np.abs(p).max(axis=0) + 1e-30)
    tol = 1e-9 if dt == np.float64 else 2e-3
    np.testing.assert_allclose(sim[spread], rsim[spread], atol=tol)
    assert np.all(np.abs(sim) <= 1 + 1e-6)
    if np.all(spread):
        assert obj == pytest.approx(robj, abs=tol)
        gscale = np.abs(rgrad).max() + 1.0
        np.testing.assert_allclose(grad, rgrad, atol=tol * gscale * (1e3 if dt == np.float32 else 1e3))
