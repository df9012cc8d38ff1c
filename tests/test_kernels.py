"""Every C kernel against its NumPy reference (iis/_reference.py) over edge cases."""
import numpy as np
import pytest

import iis
from iis import _core
from iis import _reference as ref

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-4, np.float64: 1e-10}


def rand(shape, dtype, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


# ---------------------------------------------------------------- projection
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["none", "layernorm"])
@pytest.mark.parametrize("n", [1, 7, 5000])
def test_project_matches_reference(dtype, norm, n):
    f = rand((n, 33), dtype, 1)
    p = rand((17, 33), dtype, 2) * 3
    a = iis.project(f, iis.ConceptLibrary(p), norm)
    assert a.dtype == dtype and a.shape == (n, 17)
    np.testing.assert_allclose(a, ref.project(f, p, norm), rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_project_standardize_and_stats(dtype):
    f = rand((300, 12), dtype, 3) + 2.0
    p = rand((9, 12), dtype, 4)
    lib = iis.ConceptLibrary(p)
    a = iis.project(f, lib, "standardize")
    np.testing.assert_allclose(a, ref.project(f, p, "standardize"), atol=TOL[dtype] * 50)
    mean, std = iis.activation_stats(f, lib)
    rmean, rstd = ref.colstats(ref.project(f, p, "none"))
    np.testing.assert_allclose(mean, rmean, atol=TOL[dtype] * 10)
    np.testing.assert_allclose(std, rstd, rtol=TOL[dtype] * 10)
    # eval split projected with the train statistics
    g = rand((50, 12), dtype, 5)
    b = iis.project(g, lib, "standardize", stats=(mean, std))
    np.testing.assert_allclose(b, ref.project(g, p, "standardize", (rmean, rstd)), atol=TOL[dtype] * 50)


@pytest.mark.parametrize("dtype", DTYPES)
def test_project_strided_fortran_and_memmap(dtype, tmp_path):
    big = rand((40, 50), dtype, 6)
    p = rand((5, 20), dtype, 7)
    lib = iis.ConceptLibrary(p)
    view = big[::2, 5:25]          # row-strided: used without a copy
    fort = np.asfortranarray(big[:, :20])
    expected_v = ref.project(view, p, "layernorm")
    np.testing.assert_allclose(iis.project(view, lib), expected_v, atol=TOL[dtype] * 10)
    np.testing.assert_allclose(iis.project(fort, lib), ref.project(fort, p, "layernorm"), atol=TOL[dtype] * 10)
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=dtype, shape=(40, 20))
    mm[:] = big[:, :20]
    mm.flush()
    ro = np.load(tmp_path / "f.npy", mmap_mode="r")
    np.testing.assert_allclose(iis.project(ro, lib), ref.project(big[:, :20], p, "layernorm"),
                               atol=TOL[dtype] * 10)


def test_project_float32_no_float64_copy():
    """A float32 C-contiguous input reaches the kernel as is (same buffer)."""
    from iis._validation import as_float_matrix

    f = rand((10, 4), np.float32)
    assert as_float_matrix(f, "f") is f
    view = rand((20, 8), np.float32)[::2, :4]
    out = as_float_matrix(view, "f")
    assert np.shares_memory(out, view)


# ---------------------------------------------------------------- masks
@pytest.mark.parametrize("m,s,pub,k", [(200, 0.0, False, 200), (200, 0.1, False, 180), (200, 0.7, False, 60),
                                       (200, 0.98, False, 4), (200, 0.98, True, 3), (200, 0.0, True, 199),
                                       (10, 0.7, False, 3), (3, 0.9, True, 0), (1, 0.5, False, 1)])
def test_keep_count(m, s, pub, k):
    assert _core.keep_count(m, s, published=pub) == k == ref.keep_count(m, s, pub)


def _with_ties(n, m, dtype, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(-3, 4, size=(n, m)).astype(dtype)  # many exact ties, both signs
    return a


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("k", [0, 1, 5, 19, 20])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("m", [20, 32])
def test_topk_matches_reference(dtype, soft, k, ties, m):
    a = _with_ties(64, m, dtype, k) if ties else rand((64, m), dtype, k)
    idx, val = _core.topk(a, k, soft=soft, dense=0, n_threads=2)
    dense = _core.topk(a, k, soft=soft, dense=1, n_threads=2)
    exp_idx = ref.topk_index(a, k)
    np.testing.assert_array_equal(idx, exp_idx)
    expected = ref.mask(a, k, soft)
    if soft:
        np.testing.assert_allclose(dense, expected, atol=1e-6)
    else:  # a copy of the kept entries
        np.testing.assert_array_equal(dense, expected)
    rows = np.arange(64)[:, None]
    np.testing.assert_allclose(val, expected[rows, idx], atol=1e-6)


def test_topk_one_row_one_column_and_empty():
    a = np.array([[0.5]], np.float64)
    idx, val = _core.topk(a, 1, soft=False, dense=0, n_threads=1)
    assert idx.tolist() == [[0]] and val.tolist() == [[0.5]]
    e = np.zeros((0, 4), np.float32)
    idx, val = _core.topk(e, 2, soft=False, dense=0, n_threads=1)
    assert idx.shape == (0, 2)
    with pytest.raises(ValueError):
        _core.topk(a, 2, soft=False, dense=0, n_threads=1)


def test_topk_ties_lower_index_wins():
    a = np.array([[1.0, -1.0, 1.0, 0.5, -1.0]])
    idx, _ = _core.topk(a, 2, soft=False, dense=0, n_threads=1)
    assert idx.tolist() == [[0, 1]]
    idx, _ = _core.topk(a, 3, soft=False, dense=0, n_threads=1)
    assert idx.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("soft", [False, True])
def test_topk_wide_rows_with_many_ties(dtype, soft):
    """m = 257 (many rounds of the selection on |a|), values from 7
    levels (ties everywhere, equal magnitudes of both signs), every k from 1 to m."""
    rng = np.random.default_rng(11)
    a = rng.integers(-3, 4, size=(40, 257)).astype(dtype) * dtype(0.25)
    for k in (1, 2, 37, 128, 200, 256, 257):
        idx, val = _core.topk(a, k, soft=soft, dense=0, n_threads=2)
        np.testing.assert_array_equal(idx, ref.topk_index(a, k))
        expected = ref.mask(a, k, soft)
        np.testing.assert_array_equal(_core.topk(a, k, soft=soft, dense=1, n_threads=2), expected)
        np.testing.assert_array_equal(val, np.take_along_axis(expected, idx.astype(np.int64), axis=1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("soft", [False, True])
def test_topk_across_the_whole_range_of_magnitudes(dtype, soft):
    """The k-th largest |a| is found by bisection over the bit patterns of the
    magnitudes: rows mixing zeros of both signs, subnormals, the smallest and largest
    normals, values one ulp apart and all-equal rows select exactly what the reference
    selects, for every k."""
    fi = np.finfo(dtype)
    sub = fi.smallest_subnormal
    specials = np.array([0.0, -0.0, sub, -sub, 2 * sub, fi.tiny, -fi.tiny, 1.0, -1.0,
                         np.nextafter(dtype(1), dtype(2)), -np.nextafter(dtype(1), dtype(0)),
                         1e30, -1e30, 3.5, -3.5, 1e-30], dtype=dtype)
    rng = np.random.default_rng(3)
    rows = [rng.permutation(specials) for _ in range(30)]
    rows += [np.full(16, dtype(2.5)), np.full(16, dtype(-sub)), np.zeros(16, dtype)]
    a = np.array(rows, dtype=dtype)
    for k in range(0, 17):
        idx, val = _core.topk(a, k, soft=soft, dense=0, n_threads=2)
        np.testing.assert_array_equal(idx, ref.topk_index(a, k))
        expected = ref.mask(a, k, soft)
        got = _core.topk(a, k, soft=soft, dense=1, n_threads=2)
        if soft:  # |a| - tau is formed in the input's precision
            np.testing.assert_allclose(got, expected, rtol=2 * fi.eps, atol=0)
        else:
            np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------- solver
def _design(n, d, K, dtype, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, K))
    x = rng.normal(size=(n, d))
    y = np.argmax(x @ w + rng.gumbel(size=(n, K)), axis=1).astype(np.int32)
    return x.astype(dtype), y


@pytest.mark.parametrize("dtype", DTYPES)
def test_logreg_matches_scipy_reference(dtype):
    x, y = _design(400, 8, 3, dtype, 0)
    l2 = 1e-2
    tol = 1e-6 if dtype == np.float32 else 1e-10
    w, b, it, conv, loss, gmax, _ = _core.logreg_fit(x, y=y, n_classes=3, l2=l2, tol=tol, max_iter=2000, w0=np.zeros((8, 3), dtype), b0=np.zeros(3, dtype), n_threads=1)
    rw, rb = ref.logreg_fit(x, y, 3, l2)
    assert conv == (gmax <= tol) and (conv or dtype == np.float32)  # float32 may stop at its floor
    f_core = ref.logreg_objective(w.astype(np.float64), b.astype(np.float64), x, y, l2)
    f_ref = ref.logreg_objective(rw, rb, x, y, l2)
    assert f_core <= f_ref + (1e-6 if dtype == np.float32 else 1e-10)
    np.testing.assert_allclose(w, rw, atol=5e-3 if dtype == np.float32 else 1e-5)
    # the bias is only defined up to a shift across classes
    np.testing.assert_allclose(b - b.mean(), rb - rb.mean(), atol=5e-3 if dtype == np.float32 else 1e-5)
    assert abs(loss - f_ref) < 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
def test_logreg_implicit_standardisation_equals_explicit(dtype):
    x, y = _design(300, 6, 4, np.float64, 1)
    x = x * np.array([1, 10, 0.1, 5, 1, 2]) + np.array([3, -2, 0, 100, 1, 0])
    mu, sd = ref.colstats(x)
    xs = ((x - mu) / sd).astype(dtype)
    args = (4, 1e-3, 1e-7, 3000, np.zeros((6, 4), dtype), np.zeros(4, dtype))
    w1, b1, *_ = _core.logreg_fit(xs, None, None, 0, y, *args, None, None, 1)
    w2, b2, *_ = _core.logreg_fit(x.astype(dtype), None, None, 0, y, *args, mu.astype(dtype), sd.astype(dtype), 1)
    np.testing.assert_allclose(w1, w2, atol=2e-3 if dtype == np.float32 else 1e-6)
    l1, p1 = _core.logreg_predict(xs, w=w1, b=b1, n_threads=1)
    l2_, p2 = _core.logreg_predict(x.astype(dtype), w=w2, b=b2, mu=mu.astype(dtype), sigma=sd.astype(dtype), n_threads=1)
    assert np.mean(p1 == p2) > 0.99


@pytest.mark.parametrize("dtype", DTYPES)
def test_logreg_sparse_design_equals_dense(dtype):
    a = rand((500, 30), dtype, 3)
    y = np.random.default_rng(3).integers(0, 5, 500).astype(np.int32)
    k = 4
    idx, val = _core.topk(a, k, soft=False, dense=0, n_threads=1)
    dense = _core.topk(a, k, soft=False, dense=1, n_threads=1)
    # max|grad| <= tol bounds the distance to the optimum by about tol / l2 only: float64
    # solves to 1e-10 so that the two designs' fits must agree to 1e-6
    tol = 1e-7 if dtype == np.float32 else 1e-10
    args = (y, 5, 1e-3, tol, 3000, np.zeros((30, 5), dtype), np.zeros(5, dtype), None, None, 2)
    ws, bs, *_ = _core.logreg_fit(None, idx, val, 30, *args)
    wd, bd, *_ = _core.logreg_fit(dense, None, None, 0, *args)
    np.testing.assert_allclose(ws, wd, atol=2e-3 if dtype == np.float32 else 1e-6)
    ls, ps = _core.logreg_predict(None, idx=idx, val=val, d=30, w=ws, b=bs, n_threads=1)
    ld, pd = _core.logreg_predict(dense, w=ws, b=bs, n_threads=1)
    np.testing.assert_allclose(ls, ld, atol=1e-4)
    np.testing.assert_array_equal(ps, np.argmax(ld, axis=1))


def test_logreg_warm_start_converges_faster():
    x, y = _design(800, 10, 4, np.float64, 5)
    args = (4, 1e-3, 1e-8, 3000)
    w, b, it_cold, *_ = _core.logreg_fit(x, None, None, 0, y, *args, np.zeros((10, 4)), np.zeros(4), None, None, 1)
    _, _, it_warm, conv, *_ = _core.logreg_fit(x, None, None, 0, y, *args, w, b, None, None, 1)
    assert conv and it_warm < it_cold and it_warm <= 2


def test_logreg_iteration_cap_reports_not_converged():
    x, y = _design(300, 10, 4, np.float64, 6)
    *_, it, conv, loss, gmax, _ = _core.logreg_fit(x, y=y, n_classes=4, l2=0.0, tol=1e-12, max_iter=3, w0=np.zeros((10, 4)), b0=np.zeros(4), n_threads=1)
    assert it == 3 and not conv and gmax > 1e-12


def test_logreg_one_class_and_one_sample():
    x = np.ones((1, 3))
    y = np.zeros(1, np.int32)
    w, b, it, conv, loss, _, _ = _core.logreg_fit(x, y=y, n_classes=2, l2=1e-2, tol=1e-8, max_iter=500, w0=np.zeros((3, 2)), b0=np.zeros(2), n_threads=1)
    _, pred = _core.logreg_predict(x, w=w, b=b, n_threads=1)
    assert conv and pred.tolist() == [0]


# ---------------------------------------------------------------- kmeans
@pytest.mark.parametrize("dtype", DTYPES)
def test_kmeans_fixed_point_and_inertia(dtype):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 6)) * 6
    x = (centers[rng.integers(0, 5, 1000)] + rng.normal(size=(1000, 6))).astype(dtype)
    c, lab, inertia, it = _core.kmeans(x, 5, seed=3, max_iter=300, tol=1e-8, n_threads=2)
    rlab, rd = ref.kmeans_assign(x, c)
    np.testing.assert_array_equal(lab, rlab)
    assert inertia == pytest.approx(rd.sum(), rel=1e-4)
    # Lloyd fixed point: each centre is the mean of its members
    for j in range(5):
        np.testing.assert_allclose(c[j], x[lab == j].mean(axis=0), atol=1e-3)
    # k-means++ on well separated blobs finds them: inertia close to n * d
    assert inertia < 1000 * 6 * 1.3
    from sklearn.cluster import KMeans

    sk = KMeans(5, n_init=3, random_state=0).fit(x.astype(np.float64))
    assert inertia <= sk.inertia_ * 1.01


def test_kmeans_deterministic_and_k_equals_n():
    x = np.random.default_rng(1).normal(size=(50, 3))
    a = _core.kmeans(x, 7, seed=11, max_iter=100, tol=1e-6, n_threads=1)
    b = _core.kmeans(x, 7, seed=11, max_iter=100, tol=1e-6, n_threads=2)
    np.testing.assert_array_equal(a[0], b[0])
    c, lab, inertia, _ = _core.kmeans(x[:6], 6, seed=0, max_iter=100, tol=1e-6, n_threads=1)
    assert inertia == pytest.approx(0.0, abs=1e-12) and sorted(lab.tolist()) == list(range(6))


# ---------------------------------------------------------------- curve
def test_trapezoid_and_accuracy():
    s = np.array(iis.DEFAULT_GRID)
    assert _core.trapezoid(s, np.ones_like(s)) == pytest.approx(0.98)
    arr = np.random.default_rng(0).uniform(size=s.size)
    assert _core.trapezoid(s, arr) == pytest.approx(ref.trapezoid(s, arr))
    assert _core.trapezoid(s, arr) == pytest.approx(np.trapezoid(arr, s))
    p = np.array([0, 1, 2, 2], np.int32)
    y = np.array([0, 1, 1, 2], np.int32)
    assert _core.accuracy(p, y) == 0.75


# ---------------------------------------------------------------- one solver pass
def _pass_at(x, idx, val, d, y, K, w, b, mu=None, sd=None, nt=2):
    """(loss, max |grad|) of the core at (w, b): max_iter=0 evaluates one pass."""
    *_, it, conv, loss, gmax, _ = _core.logreg_fit(x, idx=idx, val=val, d=d, y=y, n_classes=K, l2=1e-3, tol=1e-30, max_iter=0, w0=w, b0=b, mu=mu, sigma=sd, n_threads=nt)
    assert it == 0
    return loss, gmax


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_one_pass_loss_and_gradient_float32_vs_float64_reference(scale):
    """Loss and gradient of one float32 pass (fused dense pass, vectorised exp, chunked
    float partials) against the float64 reference, with logits spread over up to
    +-300 (exp arguments far below the -87 floor of the float exp)."""
    rng = np.random.default_rng(4)
    n, d, K = 6000, 40, 13  # several fixed chunks, blocks and a ragged last block
    x = rng.normal(size=(n, d))
    y = rng.integers(0, K, n).astype(np.int32)
    w = rng.normal(size=(d, K)) * scale / np.sqrt(d)
    b = rng.normal(size=K)
    f_ref = ref.logreg_objective(w, b, x, y, 1e-3)
    g_ref = np.abs(np.concatenate([g.ravel() for g in ref.logreg_gradient(w, b, x, y, 1e-3)])).max()
    f32, g32 = _pass_at(x.astype(np.float32), None, None, 0, y, K, w.astype(np.float32), b.astype(np.float32))
    f64, g64 = _pass_at(x, None, None, 0, y, K, w.copy(), b.copy())
    assert abs(f64 - f_ref) <= 1e-12 * max(1.0, abs(f_ref))
    assert abs(g64 - g_ref) <= 1e-12 * max(1.0, g_ref)
    # the float32 pass rounds x, w and the logits to float32: relative errors of ~1e-6
    assert abs(f32 - f_ref) <= 2e-5 * max(1.0, abs(f_ref))
    assert abs(g32 - g_ref) <= 2e-5 * max(1.0, g_ref)
    # the k-sparse (ELL) pass gives the same numbers on the masked design
    k = 5
    i32, v32 = _core.topk(x.astype(np.float32), k, soft=False, dense=0, n_threads=1)
    xm = ref.mask(x.astype(np.float32), k).astype(np.float64)
    fe, ge = _pass_at(None, i32, v32, d, y, K, w.astype(np.float32), b.astype(np.float32))
    fm = ref.logreg_objective(w, b, xm, y, 1e-3)
    gm = np.abs(np.concatenate([g.ravel() for g in ref.logreg_gradient(w, b, xm, y, 1e-3)])).max()
    assert abs(fe - fm) <= 2e-5 * max(1.0, abs(fm)) and abs(ge - gm) <= 2e-5 * max(1.0, gm)


def test_one_pass_identical_for_any_thread_count():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(9000, 24)).astype(np.float32)
    y = rng.integers(0, 7, 9000).astype(np.int32)
    w = (rng.normal(size=(24, 7)) * 0.3).astype(np.float32)
    b = np.zeros(7, np.float32)
    out = {nt: _pass_at(x, None, None, 0, y, 7, w, b, nt=nt) for nt in (1, 2, 3, 5)}
    assert len(set(out.values())) == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_project_reports_max_abs_of_the_features(dtype):
    """The projection's in-cache input check: max |F| over every row (several tiles),
    NaN when any entry is NaN or +-Inf, whatever the tile it falls in."""
    f = rand((5000, 33), dtype, 8)
    f[4321, 7] = -12.5
    p = ref.unit(rand((6, 33), dtype, 9)).astype(dtype)
    a, mx = _core.project(f, p, norm=0, n_threads=2, check=True)
    assert mx == 12.5
    np.testing.assert_array_equal(a, _core.project(f, p, norm=0, n_threads=2))
    for bad in (np.nan, np.inf, -np.inf):
        g = f.copy()
        g[3000, 32] = bad
        _, mx = _core.project(g, p, norm=1, n_threads=2, check=True)
        assert np.isnan(mx)


# ---------------------------------------------------------------- path, masks in place
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("published", [False, True])
def test_path_in_place_masks_equal_masked_copies(dtype, published):
    """overwrite=True applies the hard masks to the activations themselves (kept sets
    are nested along ascending s, ties included): the same accuracies and iterations
    as with masked copies, bit for bit, and the rows end up masked to the last k."""
    rng = np.random.default_rng(12)
    m, K = 40, 4
    atr = (rng.integers(-4, 5, size=(900, m)) * 0.5).astype(dtype)  # ties and zeros everywhere
    aev = (rng.integers(-4, 5, size=(300, m)) * 0.5).astype(dtype)
    w = rng.normal(size=(m, K))
    ytr = np.argmax(atr @ w + rng.gumbel(size=(900, K)), 1).astype(np.int32)
    yev = np.argmax(aev @ w + rng.gumbel(size=(300, K)), 1).astype(np.int32)
    s = np.array([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95])
    args = (K, s, False, published, 1e-3, 1e-5, 300, 2, None)
    a1, e1 = atr.copy(), aev.copy()
    copies = _core.path(a1, ytr, e1, yev, *args)
    np.testing.assert_array_equal(a1, atr)  # without overwrite nothing is written
    a2, e2 = atr.copy(), aev.copy()
    in_place = _core.path(a2, ytr, e2, yev, *args, True)
    for x, y in zip(copies, in_place):
        np.testing.assert_array_equal(x, y)
    # the arrays hold the masks of the last ratio fitted on dense rows (4 k > m)
    k_dense = min(int(k) for k in copies[1] if 4 * k > m)
    assert k_dense < m
    np.testing.assert_array_equal(a2, ref.mask(atr, k_dense))
    np.testing.assert_array_equal(e2, ref.mask(aev, k_dense))


def test_path_in_place_refuses_shared_or_read_only_arrays():
    a = rand((50, 6), np.float64, 13)
    y = (np.arange(50) % 3).astype(np.int32)
    s = np.array([0.0, 0.5])
    with pytest.raises(ValueError, match="separate, writable"):
        _core.path(a, y, a, y, n_classes=3, sparsities=s, soft=False, published=False, l2=1e-2, tol=1e-4, max_iter=20, n_threads=1, overwrite=True)
    with pytest.raises(ValueError, match="separate, writable"):
        _core.path(a, y, a[10:], y[10:], n_classes=3, sparsities=s, soft=False, published=False, l2=1e-2, tol=1e-4, max_iter=20, n_threads=1, overwrite=True)
    ro = a.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="separate, writable"):
        _core.path(ro, y, a.copy(), y, n_classes=3, sparsities=s, soft=False, published=False, l2=1e-2, tol=1e-4, max_iter=20, n_threads=1, overwrite=True)
    soft_in = a.copy()
    _core.path(soft_in, y, a.copy(), y, n_classes=3, sparsities=s, soft=True, published=False, l2=1e-2, tol=1e-4, max_iter=20, n_threads=1, overwrite=True)
    np.testing.assert_array_equal(soft_in, a)  # soft masks are never applied in place


# ---------------------------------------------------------------- preconditioned solver
def _digits(dtype):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    return x.astype(dtype), y.astype(np.int32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("standardise", [False, True])
def test_precond_matrix_matches_numpy(dtype, standardise):
    """P = [X' 1]^T [X' 1] / n + l2 on the weight diagonal + 0.01 mean(diag) on the whole
    diagonal, X' = (X - mu) / sigma, over several fixed chunks (n > 4096)."""
    rng = np.random.default_rng(21)
    n, d, l2 = 9000, 37, 1e-3
    x = (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d) * 5).astype(dtype)
    mu = sd = None
    xs = x.astype(np.float64)
    if standardise:
        mu, sd = (v.astype(dtype) for v in ref.colstats(x.astype(np.float64)))
        xs = (xs - mu) / sd
    xa = np.hstack([xs, np.ones((n, 1))])
    want = xa.T @ xa / n
    want[np.diag_indices(d + 1)] += 0.01 * np.trace(want[:d, :d]) / d + np.r_[np.full(d, l2), 0.0]
    got = _core.logreg_precond(x, mu=mu, sigma=sd, l2=l2, n_threads=2)
    assert got.shape == (d + 1, d + 1) and got.dtype == np.float64
    np.testing.assert_array_equal(got, got.T)
    np.testing.assert_allclose(got, want, rtol=1e-4 if dtype == np.float32 else 1e-12,
                               atol=1e-4 * np.abs(want).max() if dtype == np.float32 else 1e-12)


def test_preconditioned_solver_same_optimum_and_converges_where_plain_stalls():
    """Raw digits pixels (0..16, strongly correlated, unstandardised): plain L-BFGS is still
    short of tol after 3000 iterations; with the Gram preconditioner it converges in a
    fraction of that to the same optimum (objective and predictions)."""
    x, y = _digits(np.float64)
    args = (10, 1e-3, 1e-8, 3000, np.zeros((64, 10)), np.zeros(10), None, None, 2)
    wp, bp, it_p, conv_p, f_p, g_p, stop_p = _core.logreg_fit(x, None, None, 0, y, *args, True)
    wn, bn, it_n, conv_n, f_n, g_n, _ = _core.logreg_fit(x, None, None, 0, y, *args, False)
    assert g_p < 1e-7 and it_p < 1000 and conv_p == (g_p <= 1e-8)
    assert conv_p or stop_p == 3  # (or the relative-decrease rule stopped it)
    assert it_n > 2 * it_p and g_n > 100 * g_p
    f_ref = ref.logreg_objective(wp, bp, x, y, 1e-3)
    assert abs(f_p - f_ref) < 1e-12 and f_p <= f_n + 1e-12
    np.testing.assert_array_equal(_core.logreg_predict(x, w=wp, b=bp, n_threads=1)[1],
                                  _core.logreg_predict(x, w=wn, b=bn, n_threads=1)[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_preconditioned_probe_matches_plain_optimum(dtype):
    """The probe's design (implicit standardisation): both solvers reach the optimum, the
    preconditioned one in no more iterations."""
    x, y = _digits(dtype)
    mu, sd = (v.astype(dtype) for v in ref.colstats(x.astype(np.float64)))
    tol = 1e-5 if dtype == np.float32 else 1e-9
    args = (10, 1e-3, tol, 3000, np.zeros((64, 10), dtype), np.zeros(10, dtype), mu, sd, 2)
    wp, bp, it_p, conv_p, f_p, _, _ = _core.logreg_fit(x, None, None, 0, y, *args, True)
    wn, bn, it_n, conv_n, f_n, _, _ = _core.logreg_fit(x, None, None, 0, y, *args, False)
    xs = (x.astype(np.float64) - mu) / sd
    ref.assert_same_optimum([(wp, bp), (wn, bn)], xs, y, 1e-3)
    np.testing.assert_allclose(wp / sd[:, None] * sd[:, None], wn, atol=3e-2 if dtype == np.float32 else 1e-4)
    pp = np.argmax(xs @ wp + bp, 1)
    pn = np.argmax(xs @ wn + bn, 1)
    assert np.mean(pp == pn) >= 0.998


@pytest.mark.parametrize("dtype", DTYPES)
def test_preconditioned_path_on_layernorm_activations(dtype):
    """The layernorm design is rank-deficient (each row sums to zero): the damped
    preconditioner still converges on every dense ratio to the accuracies of a tight
    float64 solution, with fewer iterations over those ratios than the plain solver
    (k-sparse ones run plain)."""
    x, y = _digits(np.float64)
    lib = iis.ConceptLibrary.prototype(x[::2], y[::2], n_concepts=60, seed=0)
    s = np.array([0.0, 0.1, 0.3, 0.5, 0.7, 0.9])

    def run(dt, tol, precondition):
        a = _core.project(x.astype(dt), lib.unit().astype(dt), norm=1, n_threads=2)
        atr, ytr, aev, yev = a[::2].copy(), y[::2].copy(), a[1::2].copy(), y[1::2].copy()
        args = (10, s, False, False, 1e-3, tol, 3000, 2, None, False)
        return _core.path(atr, ytr, aev, yev, *args, precondition), len(yev)

    (acc_ref, _, _, _, _), n_ev = run(np.float64, 1e-10, True)
    tol = 1e-5 if dtype == np.float32 else 1e-8
    (acc_p, _, it_p, _, _), _ = run(dtype, tol, True)
    (acc_n, _, it_n, _, _), _ = run(dtype, tol, False)
    assert np.abs(acc_p - acc_ref).max() <= 2 / n_ev
    # the plain float32 solver can stop earlier on the relative-decrease rule (4 eval
    # digits off at s = 0.5 measured); float64 is within one
    assert np.abs(acc_n - acc_ref).max() <= (5 if dtype == np.float32 else 1) / n_ev
    dense = 4 * np.array([60 - int(np.floor(60 * v)) for v in s]) > 60
    assert it_p[dense].sum() < it_n[dense].sum()


def _classes(dtype, n=6000, d=40, K=20, seed=40):
    """Class-structured features (Gaussian classes around random means, overlapping:
    about 80% train accuracy), the kind of design the class blocks are for."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, d)) * 0.55
    y = (np.arange(n) % K).astype(np.int32)
    x = means[y] + rng.normal(size=(n, d)) @ (np.eye(d) + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d))
    return x.astype(dtype), y


@pytest.mark.parametrize("dtype", DTYPES)
def test_class_blocks_same_optimum(dtype):
    """precondition=1 (the Gram, then from iteration 3 the per-class Hessian blocks)
    reaches the optimum of precondition=2 (the Gram only) and of plain L-BFGS: each fit's
    gradient is what it reports, and objectives and weights agree within the bounds
    that l2-strong convexity gives from those gradients (ref.assert_same_optimum).
    (Iteration counts: benchmarks/, not here.)"""
    x, y = _classes(dtype)
    K, l2 = 20, 1e-3
    tol = 1e-5 if dtype == np.float32 else 1e-9
    args = (K, l2, tol, 3000, np.zeros((40, K), dtype), np.zeros(K, dtype), None, None, 2)
    fits = {pc: _core.logreg_fit(x, None, None, 0, y, *args, pc) for pc in (0, 1, 2)}
    opt = ref.assert_same_optimum([(f[0], f[1]) for f in fits.values()], x, y, l2)
    for (w, b, it, conv, f, g, _), (f_ref, g_ref, _, _) in zip(fits.values(), opt):
        assert abs(g_ref - g) <= ref.grad_rounding(x, dtype)
        assert abs(f - f_ref) <= 1e2 * np.finfo(dtype).eps * f_ref
    assert fits[1][5] <= tol
    pb = _core.logreg_predict(x, w=fits[1][0], b=fits[1][1], n_threads=1)[1]
    pg = _core.logreg_predict(x, w=fits[2][0], b=fits[2][1], n_threads=1)[1]
    assert np.mean(pb == pg) >= 0.999


def test_class_blocks_keep_the_softmax_invariant_direction():
    """Adding one vector to every class's weights leaves the softmax unchanged: only l2
    curves that direction, and at the optimum each weight row sums to zero over the
    classes. The blocks treat it exactly (1 / l2), so the fit ends there as closely as
    the Gram-only fit does (without that, 2e-5 off at tol 1e-7 on this problem)."""
    a = rand((500, 30), np.float64, 3)
    y = np.random.default_rng(3).integers(0, 5, 500).astype(np.int32)
    dense = _core.topk(a, 4, soft=False, dense=1, n_threads=1)
    args = (y, 5, 1e-3, 1e-7, 3000, np.zeros((30, 5)), np.zeros(5), None, None, 2)
    wb = _core.logreg_fit(dense, None, None, 0, *args, 1)[0]
    wg = _core.logreg_fit(dense, None, None, 0, *args, 2)[0]
    assert np.abs(wb.mean(axis=1)).max() <= max(2 * np.abs(wg.mean(axis=1)).max(), 1e-7)
    np.testing.assert_allclose(wb, wg, atol=5e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_class_blocks_same_bits_for_any_thread_count(dtype):
    """Dense and k-sparse designs: each class's rows, block and solve are one thread's
    work in a fixed order, so 1, 2 and 3 threads give the same bits."""
    x, y = _classes(dtype, n=5000)
    idx, val = _core.topk(x, 8, soft=False, dense=0, n_threads=1)
    for design in ((x, None, None, 0), (None, idx, val, 40)):
        outs = [_core.logreg_fit(*design, y, 20, 1e-3, 1e-6, 500, np.zeros((40, 20), dtype),
                                 np.zeros(20, dtype), None, None, nt, 1) for nt in (1, 2, 3)]
        assert outs[0][2] > 3  # the blocks were built (iteration 3)
        for o in outs[1:]:
            for a_, b_ in zip(outs[0], o):
                np.testing.assert_array_equal(a_, b_)


def test_class_blocks_on_ell_designs_same_optimum():
    """k-sparse rows (the path's high ratios): the blocks are built from the scattered
    rows and the ELL Gram; the fit reaches the dense design's optimum."""
    x, y = _classes(np.float64)
    idx, val = _core.topk(x, 6, soft=False, dense=0, n_threads=1)
    dense = _core.topk(x, 6, soft=False, dense=1, n_threads=1)
    args = (y, 20, 1e-3, 1e-10, 3000, np.zeros((40, 20)), np.zeros(20), None, None, 2)
    ws, bs, it_s, conv_s, f_s, _, _ = _core.logreg_fit(None, idx, val, 40, *args, 1)
    wd, bd, it_d, conv_d, f_d, _, _ = _core.logreg_fit(dense, None, None, 0, *args, 2)
    _, _, it_plain, *_ = _core.logreg_fit(None, idx, val, 40, *args, 0)
    ref.assert_same_optimum([(ws, bs), (wd, bd)], dense, y, 1e-3)


@pytest.mark.parametrize("bad", [-1, 3])
def test_precondition_level_checked(bad):
    x, y = _classes(np.float64, n=200)
    with pytest.raises(ValueError, match="precondition"):
        _core.logreg_fit(x, y=y, n_classes=20, l2=1e-3, tol=1e-6, max_iter=10, w0=np.zeros((40, 20)), b0=np.zeros(20), n_threads=1, precondition=bad)


def test_solver_runs_plain_when_the_table_lacks_syrk_trsm_potrf():
    """A BLAS table with gemm only (a C caller's minimum) still solves: plain L-BFGS,
    bit-identical to precondition=False."""
    from iis import _blas
    x, y = _digits(np.float64)
    args = (10, 1e-3, 1e-6, 500, np.zeros((64, 10)), np.zeros(10), None, None, 2)
    plain = _core.logreg_fit(x, None, None, 0, y, *args, False)
    from scipy.linalg import cython_blas
    capi = cython_blas.__pyx_capi__
    try:
        _core._set_blas(capi["sgemm"], capi["dgemm"])
        assert not _core.config()["precondition_set"]
        gemm_only = _core.logreg_fit(x, None, None, 0, y, *args, True)
        with pytest.raises(RuntimeError):
            _core.logreg_precond(x, l2=1e-3, n_threads=1)
    finally:
        _blas.install()
    assert _core.config()["precondition_set"]
    for a, b in zip(plain, gemm_only):
        np.testing.assert_array_equal(a, b)
    assert _core.logreg_fit(x, None, None, 0, y, *args, True)[2] != plain[2]


def test_preconditioner_skipped_when_the_gram_overflows():
    """|x| ~ 1e20 in float32 (possible with normalize="none"): x^T x overflows, so the
    solver runs plain, bit for bit as with precondition=False, instead of factoring Inf."""
    rng = np.random.default_rng(30)
    x = (rng.normal(size=(300, 5)) * 1e20).astype(np.float32)
    y = (np.arange(300) % 3).astype(np.int32)
    assert not np.isfinite(_core.logreg_precond(x, l2=1e-3, n_threads=1)).all()
    args = (3, 1e-3, 1e-6, 50, np.zeros((5, 3), np.float32), np.zeros(3, np.float32), None, None, 1)
    pre = _core.logreg_fit(x, None, None, 0, y, *args, True)
    plain = _core.logreg_fit(x, None, None, 0, y, *args, False)
    for a, b in zip(pre, plain):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- start from logits
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("standardise", [False, True])
def test_start_logits_is_the_least_squares_fit(dtype, standardise):
    """max_iter = 0 returns the start itself: theta = P^-1 [X' 1]^T T / n with P the
    preconditioner matrix (NumPy's solve against logreg_precond), over several chunks of
    rows (n > 4096); the passed W0, b0 and T are left untouched."""
    rng = np.random.default_rng(40)
    n, d, K = 6000, 23, 6
    x = (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 3.0).astype(dtype)
    y = (np.arange(n) % K).astype(np.int32)
    t = rng.normal(size=(n, K)).astype(dtype)
    mu = sd = None
    xs = x.astype(np.float64)
    if standardise:
        mu, sd = (v.astype(dtype) for v in ref.colstats(x.astype(np.float64)))
        xs = (xs - mu) / sd
    l2 = 1e-3
    P = _core.logreg_precond(x, mu=mu, sigma=sd, l2=l2, n_threads=2)
    want = np.linalg.solve(P, np.hstack([xs, np.ones((n, 1))]).T @ t.astype(np.float64) / n)
    w0, b0, t0 = np.ones((d, K), dtype), np.ones(K, dtype), t.copy()
    w, b, it, *_ = _core.logreg_fit(x, y=y, n_classes=K, l2=l2, tol=1e-5, max_iter=0, w0=w0, b0=b0, mu=mu, sigma=sd, n_threads=2, precondition=True, start_logits=t)
    assert it == 0
    tol = 2e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(w, want[:d], rtol=tol, atol=tol * np.abs(want).max())
    np.testing.assert_allclose(b, want[d], rtol=tol, atol=tol * np.abs(want).max())
    np.testing.assert_array_equal(w0, 1)
    np.testing.assert_array_equal(b0, 1)
    np.testing.assert_array_equal(t, t0)


def test_start_logits_reaches_the_same_optimum_in_fewer_iterations():
    """The probe on digits started from a concept predictor's train logits: the same
    optimum as from zero (unique: l2 > 0), fewer iterations; the thread count does not
    change the bits."""
    x, y = _digits(np.float64)
    mu, sd = ref.colstats(x)
    lib = iis.ConceptLibrary.prototype(x[::3], y[::3], n_concepts=40, seed=0)
    a = _core.project(x, lib.unit(), norm=1, n_threads=2)
    wa, ba, *_ = _core.logreg_fit(a, y=y, n_classes=10, l2=1e-3, tol=1e-8, max_iter=2000, w0=np.zeros((40, 10)), b0=np.zeros(10), n_threads=2)
    t = a @ wa + ba
    args = (10, 1e-3, 1e-8, 2000, np.zeros((64, 10)), np.zeros(10), mu, sd)
    cold = _core.logreg_fit(x, None, None, 0, y, *args, 2)
    warm = _core.logreg_fit(x, None, None, 0, y, *args, 2, True, t)
    warm1 = _core.logreg_fit(x, None, None, 0, y, *args, 1, True, t)
    assert cold[3] and warm[3] and warm[2] < cold[2]
    assert abs(warm[4] - cold[4]) < 1e-12
    np.testing.assert_allclose(warm[0], cold[0], atol=1e-4)
    for u, v in zip(warm, warm1):
        np.testing.assert_array_equal(u, v)


def test_start_logits_ignored_without_the_preconditioner_and_not_finite():
    """No preconditioner (precondition=False, or a k-sparse design): the start is W0, b0
    as passed, bit for bit; non-finite logits leave W0, b0 as well."""
    x, y = _digits(np.float64)
    t = np.random.default_rng(41).normal(size=(len(y), 10))
    args = (10, 1e-3, 1e-6, 30, np.zeros((64, 10)), np.zeros(10), None, None, 2)
    plain = _core.logreg_fit(x, None, None, 0, y, *args, False)
    started = _core.logreg_fit(x, None, None, 0, y, *args, False, t)
    for u, v in zip(plain, started):
        np.testing.assert_array_equal(u, v)
    t[5, 3] = np.nan
    pre = _core.logreg_fit(x, None, None, 0, y, *args, True)
    bad = _core.logreg_fit(x, None, None, 0, y, *args, True, t)
    for u, v in zip(pre, bad):
        np.testing.assert_array_equal(u, v)
    idx = np.argsort(-x, axis=1)[:, :8].astype(np.int32)
    val = np.take_along_axis(x, idx, 1)
    ell = (10, 1e-3, 1e-6, 30, np.zeros((64, 10)), np.zeros(10), None, None, 2)
    e1 = _core.logreg_fit(None, idx, val, 64, y, *ell, True)
    e2 = _core.logreg_fit(None, idx, val, 64, y, *ell, True, t)
    for u, v in zip(e1, e2):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_path_returns_the_first_ratios_train_logits(dtype):
    """train_logits0 = the train logits of the IP fitted at s[0]: the same as refitting
    that ratio alone and predicting on its (unmasked) train activations."""
    x, y = _digits(np.float64)
    lib = iis.ConceptLibrary.prototype(x[::2], y[::2], n_concepts=30, seed=0)
    a = _core.project(x.astype(dtype), lib.unit().astype(dtype), norm=1, n_threads=2)
    atr, ytr, aev, yev = a[::2].copy(), y[::2].copy(), a[1::2].copy(), y[1::2].copy()
    s = np.array([0.0, 0.5, 0.9])
    lg = np.full((len(ytr), 10), np.nan, dtype)
    _core.path(atr.copy(), ytr, aev.copy(), yev, n_classes=10, sparsities=s, soft=False, published=False, l2=1e-3, tol=1e-5, max_iter=500, n_threads=2, overwrite=True, precondition=True, train_logits0=lg)
    w, b, *_ = _core.logreg_fit(atr, y=ytr, n_classes=10, l2=1e-3, tol=1e-5, max_iter=500, w0=np.zeros((30, 10), dtype), b0=np.zeros(10, dtype), n_threads=2)
    want, _ = _core.logreg_predict(atr, w=w, b=b, n_threads=2)
    np.testing.assert_array_equal(lg, want)
    with pytest.raises(ValueError, match="train_logits0 must be"):
        _core.path(atr.copy(), ytr, aev.copy(), yev, n_classes=10, sparsities=s, soft=False, published=False, l2=1e-3, tol=1e-5, max_iter=5, n_threads=2, overwrite=True, precondition=True, train_logits0=np.zeros((len(ytr), 9), dtype))
    ro = np.zeros((len(ytr), 10), dtype)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        _core.path(atr.copy(), ytr, aev.copy(), yev, n_classes=10, sparsities=s, soft=False, published=False, l2=1e-3, tol=1e-5, max_iter=5, n_threads=2, overwrite=True, precondition=True, train_logits0=ro)
    with pytest.raises(ValueError, match="start_logits must be"):
        _core.logreg_fit(atr, y=ytr, n_classes=10, l2=1e-3, tol=1e-5, max_iter=5, w0=np.zeros((30, 10), dtype), b0=np.zeros(10, dtype), n_threads=2, precondition=True, start_logits=np.zeros((3, 10), dtype))


def _topk_index_nan_largest(a, k):
    """Reference top-k where a NaN counts as the largest magnitude (above Inf), ties to
    the lower index; columns in ascending order."""
    out = np.empty((a.shape[0], k), np.int32)
    for i, r in enumerate(a):
        nan = np.isnan(r)
        mag = np.where(nan, 0.0, np.abs(np.where(nan, 0, r))).astype(np.float64)
        order = np.lexsort((np.arange(len(r)), -mag, ~nan))  # last key sorts first
        out[i] = np.sort(order[:k])
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("soft", [False, True])
def test_topk_with_nan_and_all_zero_rows_is_defined(dtype, soft):
    """No kernel trusts that its input was checked: NaN magnitudes (any payload, either
    sign) rank above every number, ties to the lower index, and all-zero rows keep their
    first k columns; every index is written and in range, with either kernel."""
    rng = np.random.default_rng(17)
    m = 40
    a = rng.normal(size=(24, m)).astype(dtype)
    a[0, [3, 17, 30]] = np.nan
    a[1, :] = np.nan
    a[2, :] = 0.0
    a[3, [0, 5]] = [np.inf, np.nan]
    a[4, 7] = -np.nan
    bits = a.view(np.uint32 if dtype == np.float32 else np.uint64)
    bits[5, 9] = (0x7f800001 if dtype == np.float32 else 0x7ff0000000000001)  # a signalling payload
    bits[5, 11] = (0xffc00123 if dtype == np.float32 else 0xfff8000000000123)
    a[6, :] = -0.0
    for k in (0, 1, 2, 3, 5, 39, 40):
        idx, val = _core.topk(a, k, soft=soft, n_threads=2)
        want = _topk_index_nan_largest(a, k)
        np.testing.assert_array_equal(idx, want)
        dense = _core.topk(a, k, soft=soft, dense=True, n_threads=2)
        kept = np.zeros(a.shape, bool)
        np.put_along_axis(kept, want.astype(np.int64), True, axis=1)
        assert np.all(dense[~kept] == 0)
        if not soft:
            np.testing.assert_array_equal(val, np.take_along_axis(a, want.astype(np.int64), axis=1))
            np.testing.assert_array_equal(dense[kept], a[kept])


# ------------------------------------------------------------------- stop reasons
STOP = {"converged": 0, "max_iter": 1, "line_search": 2, "relative_decrease": 3, "non_finite": 4}


@pytest.mark.parametrize("dtype", DTYPES)
def test_converged_means_the_gradient_meets_tol(dtype):
    """converged is reported exactly when max |grad| <= tol (the stop code 0); a fit
    that stopped for another reason says which: the iteration cap, the relative
    decrease or the line search at this precision's floor (tol = 0 cannot be met), the line search (a
    design whose objective overflows along every direction) or a non-finite objective."""
    x, y = _classes(dtype, n=2000)
    kw = dict(y=y, n_classes=20, l2=1e-3, n_threads=2)
    for pc in (0, 1, 2):
        for tol, max_iter in ((1e-4, 3000), (0.0, 3000), (1e-12, 2)):
            w, b, it, conv, f, g, stop = _core.logreg_fit(x, tol=tol, max_iter=max_iter, precondition=pc, **kw)
            assert conv == (stop == STOP["converged"]) == (g <= tol), (pc, tol, stop, g)
            _, g_ref, _, _ = ref.logreg_optimality(w, b, x, y, 1e-3)
            assert abs(g_ref - g) <= ref.grad_rounding(x, dtype)
            if tol == 1e-4:
                assert stop == STOP["converged"]
            elif tol == 0.0:  # the precision's floor stops it: no measurable decrease either way
                assert stop in (STOP["relative_decrease"], STOP["line_search"]) and it < 3000
            else:
                assert stop == STOP["max_iter"] and it == 2
    nan = x.copy()
    nan[3, 4] = np.nan
    r = _core.logreg_fit(nan, tol=1e-6, max_iter=50, **kw)
    assert not r[3] and r[6] == STOP["non_finite"]
    if dtype == np.float64:
        huge = x.copy()
        huge[3, 4] = 1e300
        r = _core.logreg_fit(huge, tol=1e-6, max_iter=50, **kw)
        assert not r[3] and r[6] == STOP["line_search"]


def test_path_reports_each_ratios_stop_reason():
    x, y = _classes(np.float64, n=1500)
    s = np.array([0.0, 0.5, 0.9])
    kw = dict(n_classes=20, sparsities=s, l2=1e-3, n_threads=2)
    acc, kept, it, conv, stop = _core.path(x.copy(), y, x.copy(), y, tol=1e-4, max_iter=3000, **kw)
    assert conv.all() and (stop == STOP["converged"]).all()
    acc, kept, it, conv, stop = _core.path(x.copy(), y, x.copy(), y, tol=1e-12, max_iter=2, **kw)
    assert not conv.any() and (stop == STOP["max_iter"]).all() and (it == 2).all()


@pytest.mark.parametrize("design", ["dense", "standardised", "ell"])
def test_float32_fit_below_float32_floor_goes_on_in_float64(design):
    """tol = 1e-8 is below what float32 passes can show (their objective is flat to
    rounding long before): the fit goes on in float64 passes over a copy of the design
    and meets the stopping rule, at the float64 fit's optimum (within the l2 bound)."""
    x, y = _classes(np.float32, n=2000)
    kw = dict(y=y, n_classes=20, l2=1e-3, tol=1e-8, max_iter=3000, n_threads=2)
    if design == "ell":
        idx, val = _core.topk(x, 10, n_threads=1)
        args32, args64 = dict(idx=idx, val=val, d=x.shape[1]), dict(idx=idx, val=val.astype(np.float64), d=x.shape[1])
        fit32 = _core.logreg_fit(None, **args32, **kw)
        fit64 = _core.logreg_fit(None, **args64, **kw)
        dense = np.zeros(x.shape, np.float64)
        np.put_along_axis(dense, idx.astype(np.int64), val.astype(np.float64), axis=1)
    else:
        extra = {}
        if design == "standardised":
            extra = dict(mu=x.mean(0), sigma=x.std(0) + np.float32(0.5))
        fit32 = _core.logreg_fit(x, **extra, **kw)
        fit64 = _core.logreg_fit(x.astype(np.float64), **{k: v.astype(np.float64) for k, v in extra.items()}, **kw)
        dense = x.astype(np.float64)
        if extra:
            dense = (dense - extra["mu"]) / extra["sigma"].astype(np.float64)
    w, b, it, conv, f, g, stop = fit32
    assert conv and stop == STOP["converged"] and g <= 1e-8
    _, g_ref, _, _ = ref.logreg_optimality(w.astype(np.float64), b.astype(np.float64), dense, y, 1e-3)
    assert g_ref <= 1e-8 + ref.grad_rounding(dense, np.float32)
    # both meet max|grad| <= tol, so each is within sqrt(p) tol / l2 of the optimum
    bound = 2 * np.sqrt(w.size + b.size) * 1e-8 / 1e-3 + 1e-6  # plus float32 storage of W
    assert np.abs(w - fit64[0]).max() <= bound and np.abs(b - fit64[1]).max() <= bound
