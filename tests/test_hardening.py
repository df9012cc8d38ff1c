"""Hardening (issue 18): state that changes after construction, process state left as it
was, numerical range, files and the command line, tried as a careless or hostile user
would."""
import copy
import io
import os
import pickle
import stat
import subprocess
import sys
import threading
import warnings
import zipfile

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import iis
from iis._validation import single_blas

RNG = np.random.default_rng(18)


def problem(seed=0, n=240, d=12, k=3, m=10):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 1.5
    y, ye = rng.integers(0, k, n), rng.integers(0, k, n // 2)
    return means[y] + rng.normal(size=(n, d)), y, means[ye] + rng.normal(size=(n // 2, d)), ye, \
        rng.normal(size=(m, d))


XTR, YTR, XEV, YEV, P = problem()


def quiet_score(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return iis.score(*args, **kw)


# ----------------------------------------------------------------------------- library state
@pytest.mark.parametrize("bad, match", [
    (np.full((10, 12), np.nan), "NaN or Inf"),
    (np.vstack([P[:9], np.zeros((1, 12))]), "zero norm at rows \\[9\\]"),
    (P[:, :3].tolist(), None),  # fine: a new (10, 3) library
    (P[:4], "4 concept vectors for the library's 10 names"),
    ("abc", "2-D array"),
])
def test_library_vectors_are_validated_when_assigned(bad, match):
    lib = iis.ConceptLibrary(P)
    if match is None:
        lib.vectors = bad
        np.testing.assert_array_equal(lib.vectors, np.asarray(bad))
        assert lib._unit().shape == (10, 3)  # the cache was dropped with the old vectors
        return
    with pytest.raises((ValueError, TypeError), match=match):
        lib.vectors = bad
    np.testing.assert_array_equal(lib.vectors, P)  # unchanged by the refused assignment


def test_library_vectors_cannot_be_made_writable_again():
    lib = iis.ConceptLibrary(P)
    with pytest.raises(ValueError):
        lib.vectors.setflags(write=True)
    with pytest.raises(ValueError, match="read-only"):
        lib.vectors[0, 0] = 1.0


@pytest.mark.parametrize("how", ["pickle", "deepcopy", "copy", "clone"])
def test_library_copies_are_validated_and_never_stale(how):
    lib = iis.ConceptLibrary(P, kind="prototype", default_normalize="standardize", meta={"a": 1})
    u0 = lib._unit().copy()
    if how == "pickle":
        back = pickle.loads(pickle.dumps(lib))
    elif how == "deepcopy":
        back = copy.deepcopy(lib)
    elif how == "copy":
        back = copy.copy(lib)
    else:
        from sklearn.base import clone

        back = clone(iis.InterpretablePredictor(lib, sparsity=0.5)).library
    assert not back.vectors.flags.writeable
    with pytest.raises(ValueError):
        back.vectors.setflags(write=True)
    assert (back.names, back.kind, back.default_normalize, back.meta) == \
        (lib.names, lib.kind, lib.default_normalize, lib.meta)
    back.vectors = -P  # a copy's cache follows its own vectors, the original keeps its own
    np.testing.assert_allclose(back._unit(), -u0)
    np.testing.assert_array_equal(lib._unit(), u0)


@pytest.mark.parametrize("vectors", [np.full((10, 12), np.nan), np.zeros((10, 12)), np.full((10, 12), np.inf)])
def test_library_pickle_with_bad_vectors_is_refused(vectors):
    lib = iis.ConceptLibrary(P)
    state = lib.__getstate__()
    state["vectors"] = vectors
    lib.__getstate__ = lambda: state  # a pickle written with other vectors
    blob = pickle.dumps(lib)
    with pytest.raises(ValueError, match="NaN or Inf|zero norm"):
        pickle.loads(blob)


def test_library_names_are_validated_when_assigned():
    lib = iis.ConceptLibrary(P)
    with pytest.raises(ValueError, match="3 names for 10"):
        lib.names = ["a", "b", "c"]
    with pytest.raises(TypeError, match="single string"):
        lib.names = "abcdefghij"
    lib.names = range(10)
    assert lib.names == [str(i) for i in range(10)]


def test_replaced_vectors_reach_the_kernels_only_validated():
    """What crashed: vectors replaced after construction by NaN or zero rows."""
    lib = iis.ConceptLibrary(P)
    for bad in (np.full_like(P, np.nan), np.zeros_like(P)):
        with pytest.raises(ValueError):
            lib.vectors = bad
        res = quiet_score(XTR, YTR, XEV, YEV, lib, sparsities=(0.0, 0.5, 0.9))
        assert 0 <= res.iis <= 1 and np.all(res.arr <= 1.5)


# ----------------------------------------------------------------------------- BLAS threads
def blas_counts():
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_overlapping_limits_from_threads_restore_the_counts():
    """Two threads whose BLAS limits overlap and end out of order (the first in, first
    out) leave the process's counts as they were."""
    before = blas_counts()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a():
        with single_blas():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b():
        a_in.wait(5)
        with single_blas():
            b_in.set()
            a_out.wait(5)

    ts = [threading.Thread(target=f) for f in (a, b)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert blas_counts() == before


def test_concurrent_fits_leave_blas_threads_as_they_were():
    """iis.score and ConceptLibrary.text (different limits) in six threads at once."""
    img = RNG.normal(size=(XTR.shape[0], 8))
    txt = img[:6] + 0.1 * RNG.normal(size=(6, 8))
    before = blas_counts()
    errors = []

    def worker(i):
        try:
            for _ in range(3):
                if i % 2:
                    quiet_score(XTR, YTR, XEV, YEV, P, sparsities=(0.0, 0.5), max_iter=30)
                else:
                    iis.ConceptLibrary.text([f"c{j}" for j in range(6)], XTR, img, txt, steps=3,
                                            n_threads=2, top5_cutoff=-1, interpretability_cutoff=-1)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    for _ in range(3):
        ts = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert not errors
        assert blas_counts() == before


def test_the_limit_holds_in_whichever_thread_asks():
    """threadpoolctl >= 3.8 ignores the limits set by any thread but the first one to set
    them while that one is alive: a limit asked for in a second thread must still hold."""
    first_done, second_done, seen = threading.Event(), threading.Event(), []

    def first():
        with single_blas():
            pass
        first_done.set()
        second_done.wait(5)  # stays alive while the second thread asks

    def second():
        first_done.wait(5)
        with single_blas():
            seen.append(blas_counts())
        second_done.set()

    before = blas_counts()
    ts = [threading.Thread(target=f) for f in (first, second)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert seen == [[1] * len(before)]
    assert blas_counts() == before


# ----------------------------------------------------------------------------- numerical range
def blobs(n=400, d=8, k=4, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)) * 6
    lab = rng.integers(0, k, n)
    return (centers[lab] + rng.normal(size=(n, d))).astype(np.float32), lab


def _match_rows(a, b):
    """Max distance between the rows of a and b matched greedily (same row sets)."""
    dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    return max(dist[i].min() for i in range(len(a))), len(set(dist.argmin(axis=1)))


@pytest.mark.parametrize("scale", [1e19, 1e25, 1e28, 1e-20, 1e-35])
def test_kmeans_on_large_and_small_elements_matches_scikit_learn(scale):
    from sklearn.cluster import KMeans

    x, _ = blobs()
    big = x * np.float32(scale)
    lib = iis.ConceptLibrary.cluster(big, n_concepts=4, seed=0)
    scaled = big.astype(np.float64) / np.abs(big.astype(np.float64)).max()
    km = KMeans(4, n_init=10, random_state=0).fit(scaled)
    ref = km.cluster_centers_ / np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True)
    gap, distinct = _match_rows(lib.vectors.astype(np.float64), ref)
    assert distinct == 4 and gap < 1e-4
    assert sorted(lib.meta["sizes"]) == sorted(np.bincount(km.labels_).tolist())
    inertia_ref = km.inertia_ * np.abs(big.astype(np.float64)).max() ** 2
    assert lib.meta["inertia"] == pytest.approx(inertia_ref, rel=1e-4)


def test_kmeans_scaling_by_a_power_of_two_changes_nothing():
    x, _ = blobs()
    a = iis.ConceptLibrary.cluster(x, n_concepts=4, seed=3)
    b = iis.ConceptLibrary.cluster(x * np.float32(2.0 ** 40), n_concepts=4, seed=3)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert b.meta["inertia"] == a.meta["inertia"] * 4.0 ** 40


def test_cluster_refuses_wrong_length_labels_without_subsampling():
    x, lab = blobs(n=50)
    with pytest.raises(ValueError, match="element_labels has 2 entries for 50 elements"):
        iis.ConceptLibrary.cluster(x, n_concepts=3, element_labels=[0, 1])
    iis.ConceptLibrary.cluster(x, n_concepts=3, element_labels=lab)  # the right length is fine


@pytest.mark.parametrize("scale", [1e-6, 1e-9, 1e-100])
def test_features_below_layernorm_epsilon_warn_and_name_the_fix(scale):
    with pytest.warns(RuntimeWarning, match="far below LayerNorm's epsilon.*rescale the features"):
        res = quiet_score_keep(RuntimeWarning, XTR * scale, YTR, XEV * scale, YEV, P)
    assert res.ip_accuracy.max() < 0.5  # what the warning is about: chance level (3 classes)
    with pytest.warns(RuntimeWarning, match="far below LayerNorm's epsilon"):
        iis.InterpretablePredictor(P, sparsity=0.5).fit(XTR * scale, YTR)


def quiet_score_keep(category, *args, **kw):
    """iis.score with every warning but ``category`` silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("always", category)
        return iis.score(*args, sparsities=(0.0, 0.5, 0.9), **kw)


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e4])
def test_well_scaled_features_do_not_warn(scale):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = iis.score(XTR * scale, YTR, XEV * scale, YEV, P, sparsities=(0.0, 0.5, 0.9))
        iis.score(XTR * scale, YTR, XEV * scale, YEV, np.vstack([P[:1], P[:1]]), normalize="none",
                  sparsities=(0.0, 0.5))
    assert res.iis > 0.7


@pytest.mark.parametrize("lib", [P[:1], np.repeat(P[:1], 5, axis=0), np.repeat(P[:1], 5, axis=0) * np.arange(1, 6)[:, None]])
def test_degenerate_libraries_warn_under_layernorm(lib):
    with pytest.warns(RuntimeWarning, match="all point the same way.*chance level"):
        res = quiet_score_keep(RuntimeWarning, XTR, YTR, XEV, YEV, lib)
    assert res.iis < 0.6
    with warnings.catch_warnings():  # the same library without layernorm is informative
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", iis.ConvergenceWarning)
        assert iis.score(XTR, YTR, XEV, YEV, lib, normalize="none", sparsities=(0.0, 0.5)).iis > 0.2
