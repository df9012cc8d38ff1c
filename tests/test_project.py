"""The float32 projection (tiles of rows, one BLAS sgemm each, with the fused input check
and normalisation), the IIS_KERNELS switch, and the float32 solver's softmax rows."""
import os
import subprocess
import sys

import numpy as np
import pytest

import iis
from iis import _core
from iis import _reference as ref
from iis._validation import single_blas

U32 = np.finfo(np.float32).eps / 2  # unit roundoff of float32


def _project(x, u, nt=2, norm=0):
    """The float32 projection (with the input check)."""
    with single_blas():
        return _core.project(x, u, norm=norm, n_threads=nt, check=True)


def _bound(x, u):
    """Rigorous float32 dot-product error bound gamma_d * |x| |u|^T (any summation order)."""
    d = x.shape[1]
    return 1.01 * d * U32 * (np.abs(x).astype(np.float64) @ np.abs(u).astype(np.float64).T) + 1e-30


# rows around the 1024-row tile; concepts and d around vector widths
SHAPES = [(1, 1, 1), (13, 7, 5), (14, 16, 16), (15, 17, 17), (29, 31, 31), (43, 33, 32),
          (503, 100, 33), (504, 64, 48), (505, 65, 49), (1009, 768, 200), (300, 1500, 20),
          (70, 2049, 3)]


@pytest.mark.parametrize("n,d,m", SHAPES)
def test_projection_within_the_float32_error_bound(n, d, m):
    rng = np.random.default_rng(n * 7 + d + m)
    x = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.1, 10, d).astype(np.float32)
    u = rng.standard_normal((m, d)).astype(np.float32)
    a, mx = _project(x, u)
    ref = x.astype(np.float64) @ u.astype(np.float64).T
    assert a.dtype == np.float32 and a.shape == (n, m)
    assert np.all(np.abs(a - ref) <= _bound(x, u))
    assert mx == float(np.abs(x).max())


def test_projection_does_not_depend_on_threads():
    """Bit-identical for 1, 2 or 3 threads (tiles are fixed by the row count)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2000, 300)).astype(np.float32)
    u = rng.standard_normal((45, 300)).astype(np.float32)
    full, _ = _project(x, u, nt=2)
    for nt in (1, 3):
        assert np.array_equal(_project(x, u, nt=nt)[0], full)


def test_strided_features_and_normalisations():
    """Rows with a leading dimension above d (a column slice), and the fused layernorm."""
    rng = np.random.default_rng(9)
    big = rng.standard_normal((777, 130)).astype(np.float32)
    x = big[:, 3:103]  # ld 130, d 100
    u = rng.standard_normal((40, 100)).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    a, mx = _project(x, u)
    ref = x.astype(np.float64) @ u.astype(np.float64).T
    assert np.all(np.abs(a - ref) <= _bound(x, u))
    assert mx == float(np.abs(x).max())
    ln, _ = _project(x, u, norm=1)
    r = ref - ref.mean(1, keepdims=True)
    r /= np.sqrt((r ** 2).mean(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(ln, r, atol=2e-4)
    lib = iis.ConceptLibrary(u)
    np.testing.assert_allclose(iis.project(x, lib, normalize="none"), ref, atol=1e-4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3e30])
@pytest.mark.parametrize("where", [(0, 0), (513, 99), (1019, 1499), (1023, 1030), (1022, 15)])
def test_bad_entries_anywhere_are_refused(bad, where):
    """The input check sees every entry: first and last rows, first and last columns."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1024, 1500)).astype(np.float32)
    u = rng.standard_normal((20, 1500)).astype(np.float32)
    x[where] = bad
    _, mx = _project(x, u)
    assert not mx <= 1e30
    with pytest.raises(ValueError, match=f"row {where[0]}"):
        iis.project(x, iis.ConceptLibrary(u), normalize="none")
    assert x[where] == bad or np.isnan(bad)  # the input is not modified


def _cpu_has_avx512f():
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return None


def test_kernel_selection_is_reported():
    info = _core.config()
    has = _cpu_has_avx512f()
    if has is not None and sys.platform.startswith("linux"):
        assert info["cpu_simd"] == ("avx512f" if has else "none")
    assert _core.config(kernels="blas")["solver_f32"] == "blas"
    assert _core.config(kernels="blas")["kernels"] == "blas"
    assert info["kernels"] == "auto"
    assert info["solver_f32"] == ("amx-bf16" if info["cpu_amx"] else "blas")
    with pytest.raises(ValueError, match="'auto' or 'blas'"):
        _core.config(kernels="fast")


def test_iis_kernels_environment_variable(monkeypatch):
    """IIS_KERNELS is read at each call: a wrong value does not stop the import; the
    first call that uses it raises a ValueError naming the variable."""
    code = "import iis; from iis._config import config; print(config()['kernels'])"
    env = dict(os.environ, IIS_KERNELS="blas")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "blas"
    env["IIS_KERNELS"] = "fastest"
    out = subprocess.run([sys.executable, "-c", "import iis; print('imported')"], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0 and out.stdout.strip() == "imported"
    rng = np.random.default_rng(0)
    x, lib = rng.standard_normal((20, 8)).astype(np.float32), iis.ConceptLibrary(rng.standard_normal((5, 8)))
    monkeypatch.setenv("IIS_KERNELS", "fastest")
    with pytest.raises(ValueError, match="IIS_KERNELS must be 'auto' or 'blas', got 'fastest'"):
        iis.project(x, lib)
    with pytest.raises(ValueError, match="IIS_KERNELS must be 'auto' or 'blas'"):
        iis.score(x, np.arange(20) % 2, x, np.arange(20) % 2, lib)
    monkeypatch.setenv("IIS_KERNELS", "BLAS ")  # case and spaces do not matter
    assert iis.project(x, lib).shape == (20, 5)


def test_score_is_the_same_with_either_kernel(monkeypatch):
    """The whole pipeline on real features (digits) gives the same IIS up to rounding."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    lib = iis.ConceptLibrary.prototype(x[:1200], y[:1200], n_concepts=50, seed=0)
    res = {}
    for k in ("auto", "blas"):
        monkeypatch.setenv("IIS_KERNELS", k)
        res[k] = iis.score(x[:1200], y[:1200], x[1200:], y[1200:], lib)
    assert abs(res["auto"].iis - res["blas"].iis) < 0.01
    np.testing.assert_allclose(res["auto"].ip_accuracy, res["blas"].ip_accuracy, atol=0.01)


def test_library_unit_vectors_are_cached_safely():
    """unit(P) is computed once per dtype; the cache can never go stale."""
    rng = np.random.default_rng(11)
    p = rng.standard_normal((30, 50))
    x = rng.standard_normal((40, 50)).astype(np.float32)
    lib = iis.ConceptLibrary(p)
    a1 = iis.project(x, lib, normalize="none")
    assert lib._unit(np.float32) is lib._unit(np.float32)  # cached
    with pytest.raises(ValueError, match="read-only"):
        lib.vectors[0, 0] = 5.0  # the library's own copy cannot change under the cache
    u = lib.unit(np.float32)  # the public method hands out a writable copy
    u[:] = 0
    np.testing.assert_array_equal(iis.project(x, lib, normalize="none"), a1)
    ref = x.astype(np.float64) @ (p / np.linalg.norm(p, axis=1, keepdims=True)).T
    np.testing.assert_allclose(a1, ref, atol=1e-4)
    # assigning new vectors: validated and copied, the cache is dropped; later edits of
    # the caller's array do not reach the library
    q = rng.standard_normal((30, 50))
    lib.vectors = q
    a2 = iis.project(x, lib, normalize="none")
    np.testing.assert_allclose(a2, x.astype(np.float64) @ (q / np.linalg.norm(q, axis=1, keepdims=True)).T,
                               atol=1e-4)
    q[0] = -q[0]
    np.testing.assert_array_equal(iis.project(x, lib, normalize="none"), a2)


@pytest.mark.parametrize("K", [1, 5, 16, 37, 100])
@pytest.mark.parametrize("design", ["dense", "ell"])
@pytest.mark.parametrize("kernels", ["auto", "blas"])
def test_solver_softmax_against_float64(kernels, K, design):
    """The float32 solver pass (softmax rows: the AVX-512 sweeps under 'auto', the
    portable loop under 'blas'; with the bias for dense designs, without for k-sparse
    ones) gives the objective and gradient of a float64 computation to float32
    accuracy, for class counts below, at and across the 16-lane width."""
    rng = np.random.default_rng(K)
    n, d = 700, 40
    y = rng.integers(0, K, n).astype(np.int32)
    w = (rng.normal(size=(d, K)) * 0.5).astype(np.float32)
    b = rng.normal(size=K).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    if design == "dense":
        f, g = _core.logreg_objective(x, y=y, n_classes=K, l2=1e-3, w=w, b=b, amx=False, n_threads=2,
                                      kernels=kernels)
    else:
        k = 6
        idx = np.sort(rng.permuted(np.tile(np.arange(d, dtype=np.int32), (n, 1)), axis=1)[:, :k], axis=1)
        val = np.take_along_axis(x, idx, axis=1)
        f, g = _core.logreg_objective(None, idx=idx, val=val, d=d, y=y, n_classes=K, l2=1e-3, w=w, b=b, amx=False, n_threads=2,
                                      kernels=kernels)
        x = np.zeros_like(x)
        np.put_along_axis(x, idx, val, axis=1)
    w64, b64 = w.astype(np.float64), b.astype(np.float64)
    fe = ref.logreg_objective(w64, b64, x, y, 1e-3)
    ge = np.concatenate([g_.ravel() for g_ in ref.logreg_gradient(w64, b64, x, y, 1e-3)])
    assert abs(f - fe) <= 1e-6 * max(1.0, abs(fe))
    np.testing.assert_allclose(g, ge, rtol=0, atol=2e-6 * max(1.0, np.abs(ge).max()))
