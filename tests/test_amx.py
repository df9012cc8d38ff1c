"""The solver's bfloat16 AMX passes (csrc/amx.c): one pass against a NumPy emulation
of the same rounding, whole fits against the float32 BLAS passes, and the switches.

The pass tests need a CPU with AMX-BF16 (Intel Sapphire Rapids or later) and skip
elsewhere; the selection tests run everywhere."""

import platform

import numpy as np
import pytest

import iis
from iis import _core
from iis import _reference as ref
from iis._validation import single_blas

AMX = bool(_core.config()["cpu_amx"])
needs_amx = pytest.mark.skipif(not AMX, reason="this CPU (or OS) has no usable AMX-BF16")


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


@pytest.fixture
def kernels(monkeypatch):
    """iis calls run IIS_KERNELS=auto (also in a suite run under IIS_KERNELS=blas), as the
    core's calls do by default; a test sets it otherwise through the monkeypatch."""
    monkeypatch.setenv("IIS_KERNELS", "auto")
    return monkeypatch


def bf16(a):
    """float32 -> bfloat16 (round to nearest even), returned as float32."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def emulate(x, y, K, l2, w, b, mu, sigma, precise=False):
    """The AMX pass in NumPy: standardised X rounded to bf16 once (a design without mu
    centred on its float32 column means first, the means' share added back exactly),
    W and G split into hi + lo bf16 parts, products summed in float64. precise: X as
    hi + lo bf16 parts too, with the products X_lo W_hi and G_hi^T X_lo added."""
    xs = x.astype(np.float32)
    if mu is not None:
        xs = (xs - mu.astype(np.float32)) * (1.0 / sigma.astype(np.float64)).astype(np.float32)
        cx = np.zeros(x.shape[1])
    else:
        m = x.astype(np.float64).mean(axis=0).astype(np.float32)
        xs = xs - m
        cx = m.astype(np.float64)
    xb = bf16(xs).astype(np.float64)
    xl = bf16(xs - bf16(xs)).astype(np.float64) if precise else np.zeros_like(xb)
    wh = bf16(w)
    wl = bf16(w - wh)
    bias = (b.astype(np.float64) + cx @ w.astype(np.float64)).astype(np.float32)
    z = (xb @ (wh.astype(np.float64) + wl.astype(np.float64)) + xl @ wh.astype(np.float64))
    z = z.astype(np.float32).astype(np.float64) + bias.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    n = x.shape[0]
    loss = np.mean(np.log(s[:, 0]) - z[np.arange(n), y])
    g = (e / s).astype(np.float32)
    g[np.arange(n), y] -= 1
    gh = bf16(g)
    gl = bf16(g - gh)
    gb = g.astype(np.float64).sum(axis=0)
    gw = (xb.T @ (gh.astype(np.float64) + gl.astype(np.float64)) + xl.T @ gh.astype(np.float64)
          + np.outer(cx, gb)) / n + l2 * w.astype(np.float64)
    f = loss + 0.5 * l2 * np.sum(w.astype(np.float64) ** 2)
    return f, np.concatenate([gw.ravel(), gb / n])


def exact(x, y, K, l2, w, b, mu, sigma):
    """The objective and gradient in float64 without any rounding of the data
    (iis/_reference.py on the standardised design)."""
    xs = x.astype(np.float64)
    if mu is not None:
        xs = (xs - mu) / sigma
    w64, b64 = w.astype(np.float64), b.astype(np.float64)
    gw, gb = ref.logreg_gradient(w64, b64, xs, y, l2)
    return ref.logreg_objective(w64, b64, xs, y, l2), np.concatenate([gw.ravel(), gb])


def problem(n, d, K, seed=0, standardize=True, offset=3.0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, d)) * 2.0 / np.sqrt(d)
    y = rng.integers(0, K, n).astype(np.int32)
    x = (means[y] + rng.normal(size=(n, d)) + offset).astype(np.float32)
    w = (rng.normal(size=(d, K)) * 0.3).astype(np.float32)
    b = rng.normal(size=K).astype(np.float32)
    if standardize:
        mu, sg = _core.colstats(x, n_threads=1)
    else:
        mu = sg = None
    return x, y, w, b, mu, sg


# ---- selection (every machine) ------------------------------------------------------

def test_config_reports_amx_as_the_cpu_has_it(kernels):
    cfg = _core.config()
    flags = _cpu_flags()
    if platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64") and flags is not None:
        has = {"amx_bf16", "amx_tile", "avx512_bf16", "avx512bw"} <= flags
        if not has:
            assert cfg["cpu_amx"] is False
        # with the flags the kernel may still refuse the permission: then it reads False
    assert cfg["solver_f32"] == ("amx-bf16" if cfg["cpu_amx"] else "blas")
    assert _core.config(kernels="blas")["solver_f32"] == "blas"
    kernels.setenv("IIS_KERNELS", "blas")
    from iis._config import config
    assert config()["solver_f32"] == "blas"


def test_amx_pass_refused_where_it_does_not_apply(kernels):
    x, y, w, b, mu, sg = problem(600, 40, 5)
    with pytest.raises(ValueError, match="AMX pass does not apply"):
        _core.logreg_objective(x, y=y, n_classes=5, l2=1e-3, w=w, b=b, mu=mu, sigma=sg, amx=True, n_threads=1,
                               kernels="blas")
    with pytest.raises(ValueError, match="AMX pass does not apply"):  # float64
        _core.logreg_objective(x.astype(np.float64), y=y, n_classes=5, l2=1e-3, w=w.astype(np.float64), b=b.astype(np.float64), mu=mu.astype(np.float64), sigma=sg.astype(np.float64), amx=True, n_threads=1)
    # the float32 pass itself is the float64 objective to float32 accuracy
    f, g = _core.logreg_objective(x, y=y, n_classes=5, l2=1e-3, w=w, b=b, mu=mu, sigma=sg, amx=False, n_threads=1)
    fe, ge = exact(x, y, 5, 1e-3, w, b, mu.astype(np.float64), sg.astype(np.float64))
    assert abs(f - fe) <= 1e-5 * abs(fe)
    np.testing.assert_allclose(g, ge, rtol=0, atol=1e-5 * np.abs(ge).max())


def test_blas_setting_gives_the_float32_bits(kernels):
    """IIS_KERNELS=blas (kernels="blas") turns the AMX passes off: the fit is the float32
    one, bit for bit, on any CPU."""
    x, y, _, _, mu, sg = problem(6000, 96, 12, seed=3)
    w0 = np.zeros((96, 12), np.float32)
    b0 = np.zeros(12, np.float32)
    with single_blas():
        r1 = _core.logreg_fit(x, y=y, n_classes=12, l2=1e-4, tol=1e-5, max_iter=500, w0=w0, b0=b0, mu=mu, sigma=sg,
                              n_threads=2, kernels="blas")
        r2 = _core.logreg_fit(x, y=y, n_classes=12, l2=1e-4, tol=1e-5, max_iter=500, w0=w0, b0=b0, mu=mu, sigma=sg,
                              n_threads=1, kernels="blas")
    assert r1[0].tobytes() == r2[0].tobytes() and r1[2] == r2[2]


# ---- the AMX pass ----------------------------------------------------------------------

SHAPES = [
    # n, d, K: padding of d to 32 and K to 16, a partial last block of 128 rows,
    # several chunks (n >= 4096), one row, one column, one class; class tiles of 16
    # in pairs and an odd last one (K = 7, 100), only pairs (K = 17, 60)
    (1000, 50, 7),
    (2100, 40, 60),
    (5000, 33, 17),
    (300, 64, 16),
    (1, 5, 3),
    (777, 1, 4),
    (520, 96, 1),
    (9000, 200, 100),
]


@needs_amx
@pytest.mark.parametrize("n,d,K", SHAPES)
@pytest.mark.parametrize("standardize", [True, False])
def test_amx_pass_matches_its_emulation(n, d, K, standardize, kernels):
    x, y, w, b, mu, sg = problem(n, d, K, seed=n + d + K, standardize=standardize)
    y = np.minimum(y, K - 1).astype(np.int32)
    l2 = 1e-3
    f, g = _core.logreg_objective(x, y=y, n_classes=K, l2=l2, w=w, b=b, mu=mu, sigma=sg, amx=True, n_threads=2)
    fe, ge = emulate(x, y, K, l2, w, b, mu, sg)
    # float32 tile accumulation over d, and float32 logits/softmax
    assert abs(f - fe) <= 2e-6 * max(1.0, abs(fe))
    np.testing.assert_allclose(g, ge, rtol=0, atol=2e-6 * max(1.0, np.abs(ge).max()))
    # and it is the float32 objective up to the bf16 rounding of the design (2^-9)
    fx, gx = exact(x, y, K, l2, w, b, None if mu is None else mu.astype(np.float64),
                   None if sg is None else sg.astype(np.float64))
    assert abs(f - fx) <= 2 ** -7 * max(1.0, abs(fx))
    assert np.abs(g - gx).max() <= 2 ** -7 * max(1.0, np.abs(gx).max())


@needs_amx
@pytest.mark.parametrize("n,d,K", SHAPES)
@pytest.mark.parametrize("standardize", [True, False])
def test_precise_pass_matches_its_emulation_and_float32(n, d, K, standardize, kernels):
    """The precise pass (amx=2: X as bf16 hi + lo, three products) that takes the
    solver's stopping test: its emulation's numbers, and the float64 objective and
    gradient to float32-grade accuracy (the bf16 pass is off by up to 2e-4 here)."""
    x, y, w, b, mu, sg = problem(n, d, K, seed=n + d + K, standardize=standardize)
    y = np.minimum(y, K - 1).astype(np.int32)
    l2 = 1e-3
    f, g = _core.logreg_objective(x, y=y, n_classes=K, l2=l2, w=w, b=b, mu=mu, sigma=sg, amx=2, n_threads=2)
    fe, ge = emulate(x, y, K, l2, w, b, mu, sg, precise=True)
    assert abs(f - fe) <= 2e-7 * max(1.0, abs(fe))
    np.testing.assert_allclose(g, ge, rtol=0, atol=5e-7 * max(1.0, np.abs(ge).max()))
    fx, gx = exact(x, y, K, l2, w, b, None if mu is None else mu.astype(np.float64),
                   None if sg is None else sg.astype(np.float64))
    assert abs(f - fx) <= 5e-7 * max(1.0, abs(fx))
    assert np.abs(g - gx).max() <= 2e-6 * max(1.0, np.abs(gx).max())


@needs_amx
def test_precise_pass_same_bits_for_any_thread_count_and_checks_its_level(kernels):
    x, y, w, b, mu, sg = problem(9000, 130, 21, seed=11, standardize=False)
    outs = [_core.logreg_objective(x, y=y, n_classes=21, l2=1e-4, w=w, b=b, mu=mu, sigma=sg, amx=2, n_threads=t) for t in (1, 2, 3)]
    for f, g in outs[1:]:
        assert f == outs[0][0] and g.tobytes() == outs[0][1].tobytes()
    for bad in (-1, 3):
        with pytest.raises(ValueError, match="amx must be"):
            _core.logreg_objective(x, y=y, n_classes=21, l2=1e-4, w=w, b=b, mu=mu, sigma=sg, amx=bad, n_threads=1)


@needs_amx
def test_amx_pass_reads_strided_rows_and_leaves_inputs_alone(kernels):
    x, y, w, b, mu, sg = problem(1300, 70, 9, seed=5)
    wide = np.zeros((1300, 101), np.float32)
    wide[:, :70] = x
    view = wide[:, :70]
    before = (wide.copy(), w.copy(), b.copy(), mu.copy(), sg.copy())
    f1, g1 = _core.logreg_objective(view, y=y, n_classes=9, l2=1e-3, w=w, b=b, mu=mu, sigma=sg, amx=True, n_threads=2)
    f2, g2 = _core.logreg_objective(x, y=y, n_classes=9, l2=1e-3, w=w, b=b, mu=mu, sigma=sg, amx=True, n_threads=2)
    assert f1 == f2 and g1.tobytes() == g2.tobytes()
    for a, c in zip(before, (wide, w, b, mu, sg)):
        assert a.tobytes() == c.tobytes()


@needs_amx
def test_amx_pass_same_bits_for_any_thread_count(kernels):
    x, y, w, b, mu, sg = problem(9000, 130, 21, seed=11)
    outs = [_core.logreg_objective(x, y=y, n_classes=21, l2=1e-4, w=w, b=b, mu=mu, sigma=sg, amx=True, n_threads=t) for t in (1, 2, 3)]
    for f, g in outs[1:]:
        assert f == outs[0][0] and g.tobytes() == outs[0][1].tobytes()


# ---- whole fits --------------------------------------------------------------------------

def _fit(x, y, K, mu, sg, tol, threads=2, kernels="auto"):
    w0 = np.zeros((x.shape[1], K), np.float32)
    b0 = np.zeros(K, np.float32)
    with single_blas():
        return _core.logreg_fit(x, y=y, n_classes=K, l2=1e-4, tol=tol, max_iter=1000, w0=w0, b0=b0, mu=mu, sigma=sg, n_threads=threads,
                                kernels=kernels)


@needs_amx
@pytest.mark.parametrize("standardize", [True, False])
def test_amx_fit_reaches_the_float32_optimum(standardize, kernels):
    """The fit that starts on AMX passes ends where the float32 fit ends: the float32
    gradient at its solution meets the tolerance (or the float32 relative-decrease rule
    stopped it at the same loss), and its predictions are the float32 fit's."""
    x, y, _, _, mu, sg = problem(12000, 96, 12, seed=7, standardize=standardize)
    xe, ye, _, _, _, _ = problem(4000, 96, 12, seed=7, standardize=False)
    tol = 1e-5
    wa, ba, ita, ca, fa, ga = _fit(x, y, 12, mu, sg, tol)
    wb, bb, itb, cb, fb, gb = _fit(x, y, 12, mu, sg, tol, kernels="blas")
    assert ca and cb
    # the reported gradient is a float32 one: recompute it independently
    f32, g32 = _core.logreg_objective(x, y=y, n_classes=12, l2=1e-4, w=wa, b=ba, mu=mu, sigma=sg, amx=False, n_threads=2)
    assert abs(np.abs(g32).max() - ga) <= 1e-6
    assert ga <= tol or abs(fa - fb) <= 1e-6 * abs(fb)
    assert abs(fa - fb) <= 1e-5 * abs(fb)
    with single_blas():
        _, pa = _core.logreg_predict(xe, w=wa, b=ba, mu=mu, sigma=sg, n_threads=2)
        _, pb = _core.logreg_predict(xe, w=wb, b=bb, mu=mu, sigma=sg, n_threads=2)
    assert np.mean(pa == pb) >= 0.995
    assert abs(_core.accuracy(pa, ye) - _core.accuracy(pb, ye)) <= 0.003


@needs_amx
def test_amx_fit_same_bits_for_any_thread_count(kernels):
    x, y, _, _, mu, sg = problem(9000, 64, 10, seed=2)
    runs = [_fit(x, y, 10, mu, sg, 1e-5, t) for t in (1, 2, 3)]
    for r in runs[1:]:
        assert r[0].tobytes() == runs[0][0].tobytes() and r[2] == runs[0][2]


@needs_amx
def test_score_with_amx_matches_the_float32_score(kernels):
    """End to end (probe on 10,000 x 128, path on 64 concepts): the same IIS and ARR
    as with the float32 passes, within the tolerances the benchmarks hold iis to."""
    rng = np.random.default_rng(0)
    K, d = 20, 128
    means = rng.normal(size=(K, d)) * 0.6
    ytr = rng.integers(0, K, 10000)
    yev = rng.integers(0, K, 3000)
    xtr = (means[ytr] + rng.normal(size=(10000, d))).astype(np.float32)
    xev = (means[yev] + rng.normal(size=(3000, d))).astype(np.float32)
    lib = xtr[rng.choice(10000, 64, replace=False)]
    ra = iis.score(xtr, ytr, xev, yev, lib, n_threads=2)
    kernels.setenv("IIS_KERNELS", "blas")
    rb = iis.score(xtr, ytr, xev, yev, lib, n_threads=2)
    assert abs(ra.iis - rb.iis) <= 0.005
    assert np.abs(ra.arr - rb.arr).max() <= 0.01
    assert abs(ra.probe_accuracy - rb.probe_accuracy) <= 0.005


# ---- the Gram of the preconditioner on AMX tiles ------------------------------------------

def emulate_precond(x, mu, sigma, l2):
    """The solver's P from the design rounded to bf16 as the AMX Gram rounds it, in
    float64: [X'_b 1]^T [X'_b 1] / n + l2 on the weights + 0.01 mean(diag) damping (the
    column sums from the unrounded X')."""
    xs = x.astype(np.float32)
    if mu is not None:
        xs = (xs - mu.astype(np.float32)) * (1.0 / sigma.astype(np.float64)).astype(np.float32)
    xb = bf16(xs).astype(np.float64)
    n, d = x.shape
    P = np.empty((d + 1, d + 1))
    P[:d, :d] = xb.T @ xb / n
    P[:d, d] = P[d, :d] = xs.astype(np.float64).sum(axis=0) / n
    P[d, d] = 1.0
    P[np.diag_indices(d + 1)] += 0.01 * np.trace(P[:d, :d]) / d + np.r_[np.full(d, l2), 0.0]
    return P


GRAM_SHAPES = [(300, 64), (1000, 50), (5000, 33), (9000, 200), (257, 1)]


@needs_amx
@pytest.mark.parametrize("n,d", GRAM_SHAPES)
@pytest.mark.parametrize("standardize", [True, False])
def test_amx_gram_matches_its_emulation(n, d, standardize, kernels):
    """Padding of d to 32, a partial last block, several chunks (n > 4096), one column:
    the AMX Gram is the Gram of the bf16-rounded design to float32 accumulation, and
    within the rounding (2^-8 of the largest entry) of the float32 syrk one."""
    x, _, _, _, mu, sg = problem(n, d, 3, seed=n + d, standardize=standardize)
    got = _core.logreg_precond(x, mu=mu, sigma=sg, l2=1e-3, n_threads=2, amx=True)
    want = emulate_precond(x, mu, sg, 1e-3)
    assert got.shape == (d + 1, d + 1)
    np.testing.assert_array_equal(got, got.T)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())
    exact_p = _core.logreg_precond(x, mu=mu, sigma=sg, l2=1e-3, n_threads=2)
    assert np.abs(got - exact_p).max() <= 2 ** -8 * np.abs(exact_p).max()
    # inputs untouched, the same bits for any thread count
    x0 = x.copy()
    for nt in (1, 3):
        assert _core.logreg_precond(x, mu=mu, sigma=sg, l2=1e-3, n_threads=nt, amx=True).tobytes() == got.tobytes()
    np.testing.assert_array_equal(x, x0)


def test_amx_gram_refused_where_it_does_not_apply(kernels):
    x, _, _, _, mu, sg = problem(600, 40, 3)
    with pytest.raises(ValueError, match="AMX Gram does not apply"):  # float64
        _core.logreg_precond(x.astype(np.float64), l2=1e-3, n_threads=1, amx=True)
    with pytest.raises(ValueError, match="AMX Gram does not apply"):
        _core.logreg_precond(x, mu=mu, sigma=sg, l2=1e-3, n_threads=1, amx=True, kernels="blas")
    if not AMX:
        with pytest.raises(ValueError, match="AMX Gram does not apply"):
            _core.logreg_precond(x, mu=mu, sigma=sg, l2=1e-3, n_threads=1, amx=True)


@needs_amx
@pytest.mark.parametrize("standardize", [True, False])
def test_start_from_logits_on_the_tiles_is_the_least_squares_fit(standardize, kernels):
    """Where the AMX passes run, the start P^-1 [X' 1]^T T / n takes X'^T T on the tiles
    (X' rounded to bf16, T as hi + lo parts): the float64 least-squares fit to about
    the design's rounding; non-finite logits leave W0, b0 as passed."""
    x, _, _, _, mu, sg = problem(20000, 64, 8, seed=13, standardize=standardize)
    y = (np.arange(20000) % 8).astype(np.int32)
    t = np.random.default_rng(14).normal(size=(20000, 8)).astype(np.float32)
    l2 = 1e-3
    xs = x.astype(np.float64)
    if standardize:
        xs = (xs - mu.astype(np.float64)) / sg.astype(np.float64)
    P = _core.logreg_precond(x, mu=mu, sigma=sg, l2=l2, n_threads=2)
    want = np.linalg.solve(P, np.hstack([xs, np.ones((20000, 1))]).T @ t.astype(np.float64) / 20000)
    w0, b0 = np.ones((64, 8), np.float32), np.ones(8, np.float32)
    with single_blas():
        w, b, it, *_ = _core.logreg_fit(x, y=y, n_classes=8, l2=l2, tol=1e-5, max_iter=0, w0=w0, b0=b0, mu=mu, sigma=sg, n_threads=2, precondition=True, start_logits=t)
    assert it == 0
    scale = np.abs(want).max()
    np.testing.assert_allclose(w, want[:64], rtol=0, atol=5e-3 * scale)  # measured 1.6e-3, 2.0e-3
    np.testing.assert_allclose(b, want[64], rtol=0, atol=5e-3 * scale)
    assert np.abs(w - want[:64]).max() > 0  # the tiles' rounding, not the float32 GEMM
    t[7, 2] = np.inf
    with single_blas():
        w, b, *_ = _core.logreg_fit(x, y=y, n_classes=8, l2=l2, tol=1e-5, max_iter=0, w0=w0, b0=b0, mu=mu, sigma=sg, n_threads=2, precondition=True, start_logits=t)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(b, b0)
