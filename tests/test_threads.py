"""Threads (issue 7): ``iis.score`` called from 4 Python threads at once gives the same
results as sequential calls, and the results do not depend on ``n_threads``.

The kernels release the GIL and keep no global mutable state (seed, thread count and
hooks travel in a per-call context). BLAS runs single-threaded and the kernels split
their GEMMs and reductions over fixed row blocks/chunks added in order, so every output
(IIS, ARR, accuracies, k, and the solver's iteration counts) is bitwise the same for 1, 2
or 3 threads. Problem sizes are above the core's parallel threshold (200,000 elements).
"""
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import iis
from iis import _core


def problem(seed, n=1200, d=32, m=40, k=4, n_eval=400):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 0.5
    y = rng.integers(0, k, n)
    ye = rng.integers(0, k, n_eval)
    return (means[y] + rng.normal(size=(n, d)), y, means[ye] + rng.normal(size=(n_eval, d)), ye,
            rng.normal(size=(m, d)))


GRID = (0.0, 0.5, 0.9)


def run(p, n_threads=1, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", iis.ConvergenceWarning)
        r = iis.score(*p, sparsities=GRID, n_threads=n_threads, tol=1e-6, **kw)
    return (r.iis, r.arr.tolist(), r.ip_accuracy.tolist(), r.probe_accuracy, r.kept.tolist(),
            r.n_iter.tolist(), r.probe_n_iter)


@pytest.fixture(scope="module")
def problems():
    return [problem(s) for s in range(4)]


@pytest.fixture(scope="module")
def sequential(problems):
    return [run(p) for p in problems]


def test_four_threads_at_once_equal_sequential(problems, sequential):
    barrier = threading.Barrier(4)

    def worker(i):
        barrier.wait()  # all four enter the C core together
        return run(problems[i])

    for _ in range(2):
        with ThreadPoolExecutor(4) as ex:
            assert list(ex.map(worker, range(4))) == sequential  # bitwise, iteration counts included


def test_four_threads_same_shared_inputs(problems, sequential):
    """The same (read-only) arrays used by four threads at once."""
    p = tuple(np.array(a, copy=True) for a in problems[0])
    for a in p:
        a.flags.writeable = False
    barrier = threading.Barrier(4)

    def worker(_):
        barrier.wait()
        return run(p)

    with ThreadPoolExecutor(4) as ex:
        assert list(ex.map(worker, range(4))) == [sequential[0]] * 4


def test_threads_with_staggered_calls_and_other_entry_points(problems, sequential):
    """Short calls entering and leaving (each sets and restores the BLAS limit) while long
    calls run, next to the library builders and the predictor."""
    small = problem(9, n=200, d=8, m=10, n_eval=50)
    small_seq = run(small)
    lib_seq = iis.ConceptLibrary.cluster(problems[3][0], n_concepts=12, n_threads=1).vectors
    clf_seq = iis.InterpretablePredictor(problems[3][4], sparsity=0.5, n_threads=1).fit(
        problems[3][0], problems[3][1]).coef_

    def worker(i):
        if i == 0:
            return [run(small) for _ in range(15)]
        if i == 3:
            lib = iis.ConceptLibrary.cluster(problems[3][0], n_concepts=12, n_threads=1).vectors
            clf = iis.InterpretablePredictor(problems[3][4], sparsity=0.5, n_threads=1).fit(
                problems[3][0], problems[3][1]).coef_
            return lib, clf
        return run(problems[i])

    with ThreadPoolExecutor(4) as ex:
        out = list(ex.map(worker, range(4)))
    assert out[0] == [small_seq] * 15
    assert out[1] == sequential[1] and out[2] == sequential[2]
    np.testing.assert_array_equal(out[3][0], lib_seq)
    np.testing.assert_array_equal(out[3][1], clf_seq)


def test_score_identical_with_one_or_two_threads(problems, sequential):
    for p, seq in zip(problems[:2], sequential[:2]):
        assert run(p, n_threads=2) == seq  # bitwise, iteration counts included
        assert run(p, n_threads=-1) == seq
    big = problem(7, n=6000, d=48, m=64, k=40, n_eval=500)  # the solver's passes run in parallel too
    assert run(big, n_threads=1) == run(big, n_threads=2)


def test_kernels_bitwise_identical_for_any_thread_count():
    """BLAS pinned to one thread: every kernel output is bitwise the same with 1, 2, 3 threads."""
    rng = np.random.default_rng(5)
    n, d, m, K = 6000, 24, 48, 40          # n*m and n*K above the parallel threshold
    x = rng.normal(size=(n, d))
    y = rng.integers(0, K, n).astype(np.int32)
    u = iis.ConceptLibrary(rng.normal(size=(m, d))).unit()
    elements = rng.normal(size=(3000, 70))  # n*d above the threshold
    t_targets = rng.normal(size=(n, 40))  # n*C above the threshold
    w_text = rng.normal(size=(40, d)) * 0.1

    def outputs(nt):
        out = {}
        rng_pre = np.random.default_rng(6)
        with threadpool_limits(1, user_api="blas"):
            a = _core.project(x, u, norm=1, n_threads=nt)
            out["project"] = a
            out["colstats"] = _core.colstats(a, n_threads=nt)
            out["topk"] = _core.topk(a, 12, soft=0, dense=0, n_threads=nt)
            out["mask"] = _core.topk(a, 12, soft=1, dense=1, n_threads=nt)
            mu, sd = _core.colstats(x, n_threads=nt)
            out["probe"] = _core.logreg_fit(x, y=y, n_classes=K, l2=1e-3, tol=1e-6, max_iter=60, w0=np.zeros((d, K)), b0=np.zeros(K), mu=mu, sigma=sd, n_threads=nt)
            idx, val = out["topk"]
            out["ell"] = _core.logreg_fit(None, idx=idx, val=val, d=m, y=y, n_classes=K, l2=1e-3, tol=1e-6, max_iter=60, w0=np.zeros((m, K)), b0=np.zeros(K), n_threads=nt)
            # big enough for the preconditioner's Gram (4 chunks) and its dtrsm slabs to
            # run in parallel
            xb = np.tile(x, (4, 7))[:, :160] + rng_pre.normal(size=(4 * n, 160)) * 0.1
            yb = np.tile(y, 4)
            out["precond"] = _core.logreg_precond(xb, l2=1e-3, n_threads=nt)
            out["probe_pre"] = _core.logreg_fit(xb, y=yb, n_classes=K, l2=1e-3, tol=1e-6, max_iter=15, w0=np.zeros((160, K)), b0=np.zeros(K), n_threads=nt)
            # p = (d + 1) K = 40,100 parameters: the L-BFGS vector algebra runs in
            # parallel over fixed chunks (float32 also on AMX passes where the CPU has them)
            xw = rng_pre.normal(size=(3000, 400))
            yw = rng_pre.integers(0, 100, 3000).astype(np.int32)
            for dt in (np.float32, np.float64):
                out[f"wide_{dt.__name__}"] = _core.logreg_fit(xw.astype(dt), y=yw, n_classes=100, l2=1e-3, tol=1e-6, max_iter=12, w0=np.zeros((400, 100), dt), b0=np.zeros(100, dt), n_threads=nt)
            out["predict"] = _core.logreg_predict(x, w=out["probe"][0], b=out["probe"][1], mu=mu, sigma=sd, n_threads=nt)
            out["path"] = _core.path(a, y, a[:500], y[:500], n_classes=K, sparsities=np.array([0.0, 0.5, 0.9]), soft=False, published=False, l2=1e-3, tol=1e-5, max_iter=40, n_threads=nt)
            out["kmeans"] = _core.kmeans(elements, 30, seed=7, max_iter=40, tol=0.0, n_threads=nt)
            out["text"] = _core.text_objective(x, t_targets, w_text, n_threads=nt)
        return out

    base = outputs(1)
    for nt in (2, 3):
        other = outputs(nt)
        for key, value in base.items():
            for a, b in zip(value if isinstance(value, tuple) else (value,),
                            other[key] if isinstance(other[key], tuple) else (other[key],)):
                assert np.array_equal(np.asarray(a), np.asarray(b)), (key, nt)


def test_library_builders_same_result_with_one_or_two_threads():
    x = np.random.default_rng(3).normal(size=(3000, 70))
    a = iis.ConceptLibrary.cluster(x, n_concepts=25, n_threads=1)
    b = iis.ConceptLibrary.cluster(x, n_concepts=25, n_threads=2)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert a.meta["n_iter"] == b.meta["n_iter"] and a.meta["inertia"] == b.meta["inertia"]
