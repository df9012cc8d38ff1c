"""Memory (issue 7): 1,000 repeated calls grow neither resident memory nor reference counts
(bottleneck's memory_test habit), on the success paths and on the error paths (a kernel
that raises must still free its scratch and release its references).

Each check makes 300 warm-up calls (allocator pools, BLAS buffers and caches settle:
threadpoolctl's ctypes lookups and NumPy's dispatch caches hold ~50 KiB), then measures
1,000 more: resident memory from /proc/self/statm; traced memory from tracemalloc, which
runs from before the warm-up so that a bounded cache replacing its entries does not read
as growth (NumPy reports its data buffers to it); reference counts of the inputs and of a
few singletons with ``sys.getrefcount``; the number of GC-tracked objects.
"""
import gc
import os
import sys
import tracemalloc
import warnings

import numpy as np
import pytest

import iis
from iis import _core

N_CALLS = 1000

_RNG = np.random.default_rng(11)
XTR = _RNG.normal(size=(40, 5))
YTR = np.arange(40) % 2
XEV = _RNG.normal(size=(20, 5))
YEV = np.arange(20) % 2
P = _RNG.normal(size=(6, 5))
INPUTS = (XTR, YTR, XEV, YEV, P)


def rss_bytes():
    if os.path.exists("/proc/self/statm"):
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import resource  # pragma: no cover - not Linux: peak RSS, still must not grow

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def refcounts(objs):
    return [sys.getrefcount(o) for o in objs]


SINGLETONS = (None, True, False, 0, 1, 2)


def measure(call, objs, n=N_CALLS, warmup=300):
    """Growth of (RSS, traced bytes, GC objects) over ``n`` calls, and refcounts before/after.
    tracemalloc runs from before the warm-up, so a bounded cache that churns (new entries
    replace untraced old ones) does not read as growth."""
    tracemalloc.start()
    try:
        for _ in range(warmup):
            call()
        gc.collect()
        refs0 = refcounts(objs + SINGLETONS)
        n_obj0 = len(gc.get_objects())
        rss0 = rss_bytes()
        t0, _ = tracemalloc.get_traced_memory()
        for _ in range(n):
            call()
        gc.collect()
        t1, _ = tracemalloc.get_traced_memory()
        rss1 = rss_bytes()
        n_obj1 = len(gc.get_objects())
        refs1 = refcounts(objs + SINGLETONS)
    finally:
        tracemalloc.stop()
    return rss1 - rss0, t1 - t0, n_obj1 - n_obj0, refs0, refs1


def check(call, objs=(), rss_limit=1 << 20, traced_limit=48 << 10):
    rss, traced, n_obj, refs0, refs1 = measure(call, tuple(objs))
    print(f"RSS {rss / 1024:+.0f} KiB, traced {traced / 1024:+.1f} KiB, objects {n_obj:+d}")
    assert refs1[: len(objs)] == refs0[: len(objs)], "an input's reference count changed"
    # the singletons are shared with the interpreter: a leak of one reference per call shows up
    # as a growth of N_CALLS, far above the noise of unrelated code
    assert all(abs(b - a) < N_CALLS // 2 for a, b in zip(refs0[len(objs):], refs1[len(objs):]))
    assert n_obj < 100, f"{n_obj} more GC-tracked objects after {N_CALLS} calls"
    assert traced < traced_limit, f"traced memory grew by {traced} bytes over {N_CALLS} calls"
    assert rss < rss_limit, f"RSS grew by {rss} bytes over {N_CALLS} calls"


def _quiet(f):
    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return f()
    return call


def test_score_1000_calls():
    check(_quiet(lambda: iis.score(*INPUTS, sparsities=(0.0, 0.5), n_threads=1)), INPUTS)


def test_score_1000_failing_calls():
    bad = XEV.copy()
    bad[3, 1] = np.nan

    def call():
        with pytest.raises(ValueError):
            iis.score(XTR, YTR, bad, YEV, P, sparsities=(0.0, 0.5))

    check(call, (XTR, YTR, bad, YEV, P))


def test_library_and_predictor_1000_calls():
    lib = iis.ConceptLibrary(P)
    clf = iis.InterpretablePredictor(lib, sparsity=0.5, n_threads=1).fit(XTR, YTR)

    def call():
        iis.project(XEV, lib, n_threads=1)
        clf.explain(XEV[:2], top=2)
        iis.ConceptLibrary.cluster(XTR, n_concepts=4, n_threads=1)

    check(_quiet(call), (XEV, XTR, YTR, P))


def test_kernels_1000_calls_success_and_error_paths():
    """Every kernel, directly: success, a Python-side argument error, and a kernel-side
    error after its outputs were allocated (labels out of range, k out of range ...)."""
    a = _RNG.normal(size=(30, 8))
    y = (np.arange(30) % 3).astype(np.int32)
    s = np.array([0.0, 0.5, 0.9])
    w0, b0 = np.zeros((8, 3)), np.zeros(3)
    f = _RNG.normal(size=(30, 4))
    t = _RNG.normal(size=(30, 2))
    w = _RNG.normal(size=(2, 4))
    y_bad = y.copy()
    y_bad[0] = 7
    u = iis.ConceptLibrary(_RNG.normal(size=(5, 4))).unit()
    objs = (a, y, s, w0, b0, f, t, w, y_bad, u)

    def raises(fn, *args):
        try:
            fn(*args)
        except (ValueError, TypeError):
            return
        raise AssertionError("expected an error")

    def call():
        _core.project(f, u, norm=1, n_threads=1)
        _core.colstats(a, n_threads=1)
        _core.topk(a, 3, soft=1, dense=0, n_threads=1)
        _core.topk(a, 3, soft=0, dense=1, n_threads=1)
        idx, val = _core.topk(a, 3, soft=0, dense=0, n_threads=1)
        _core.logreg_fit(None, idx=idx, val=val, d=8, y=y, n_classes=3, l2=1e-2, tol=1e-4, max_iter=20, w0=w0, b0=b0, n_threads=1)
        _core.logreg_predict(a, w=w0, b=b0, n_threads=1)
        _core.path(a, y, a, y, n_classes=3, sparsities=s, soft=False, published=False, l2=1e-2, tol=1e-4, max_iter=20, n_threads=1)
        _core.kmeans(a, 4, seed=0, max_iter=10, tol=1e-4, n_threads=1)
        _core.text_objective(f, t, w, n_threads=1)
        _core.text_fit(f, t, f[:5], t[:5], n_concepts=2, w0=w, steps=3, eval_every=1, patience=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, seed=0, n_threads=1)
        _core.trapezoid(s, s)
        _core.accuracy(y, y)
        raises(_core.path, a, y_bad, a, y, 3, s, False, False, 1e-2, 1e-4, 20, 1, None)
        raises(_core.logreg_fit, a, None, None, 0, y_bad, 3, 1e-2, 1e-4, 20, w0, b0, None, None, 1)
        raises(_core.topk, a, 99, 0, 0, 1)
        raises(_core.project, f, a, 1, None, None, 1)
        raises(_core.kmeans, a, 99, 0, 10, 1e-4, 1)
        raises(_core.colstats, a[:0], 1)
        raises(_core.text_fit, f, t, f, t[:, :1], 2, None, 3, 1, 1, 1e-3, 0.9, 0.999, 1e-8, 0, 1, None)

    check(call, objs)


def test_progress_callback_that_raises_1000_calls():
    """A progress callable that raises stops the path; its exception propagates, nothing leaks."""
    a = _RNG.normal(size=(30, 8))
    y = (np.arange(30) % 3).astype(np.int32)
    s = np.array([0.0, 0.5, 0.9])

    class Boom(Exception):
        pass

    def progress(*event):
        raise Boom(event)

    def call():
        with pytest.raises(Boom):
            _core.path(a, y, a, y, n_classes=3, sparsities=s, soft=False, published=False, l2=1e-2, tol=1e-4, max_iter=20, n_threads=1, progress=progress)

    check(call, (a, y, s, progress))
