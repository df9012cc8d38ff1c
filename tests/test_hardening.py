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


@pytest.mark.parametrize("lib", [P[:1], np.repeat(P[:1], 5, axis=0),
                                 np.repeat(P[:1], 5, axis=0) * np.arange(1, 6)[:, None]])
def test_degenerate_libraries_warn_under_layernorm(lib):
    with pytest.warns(RuntimeWarning, match="all point the same way.*chance level"):
        res = quiet_score_keep(RuntimeWarning, XTR, YTR, XEV, YEV, lib)
    assert res.iis < 0.6
    with warnings.catch_warnings():  # the same library without layernorm is informative
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", iis.ConvergenceWarning)
        assert iis.score(XTR, YTR, XEV, YEV, lib, normalize="none", sparsities=(0.0, 0.5)).iis > 0.2


# ----------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return iis.InterpretablePredictor(iis.ConceptLibrary(P, names=[f"c{i}" for i in range(10)]),
                                          sparsity=0.5, normalize="standardize").fit(XTR, YTR)


def model_arrays(model, tmp_path):
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _json_edit(arrays, key, **changes):
    import json

    d = json.loads(str(arrays[key]))
    d.update(changes)
    arrays[key] = np.asarray(json.dumps(d))


PREDICTOR_EDITS = {
    "nan-weights": (lambda a: a["coef"].__setitem__((0, 1), np.nan), "member 'coef' contains NaN"),
    "inf-intercept": (lambda a: a["intercept"].__setitem__(0, np.inf), "member 'intercept' contains NaN"),
    "zero-std": (lambda a: a["std"].__setitem__(3, 0.0), "member 'std' must be > 0"),
    "negative-std": (lambda a: a["std"].__setitem__(3, -1.0), "member 'std' must be > 0"),
    "nan-mean": (lambda a: a["mean"].__setitem__(0, np.nan), "member 'mean' must hold 10 finite"),
    "no-std": (lambda a: a.pop("std"), "member 'std' must hold"),
    "unknown-normalize": (lambda a: _json_edit(a, "params", normalize="zscore"), "member 'params'.*normalize"),
    "unknown-info-normalize": (lambda a: _json_edit(a, "info", normalize_="zscore"), "normalize_='zscore'"),
    "unknown-library-normalize": (lambda a: a.__setitem__("library_default_normalize", np.asarray("zz")),
                                  "default_normalize"),
    "huge-k": (lambda a: _json_edit(a, "info", k_=10**12), "k_=1000000000000"),
    "k-zero": (lambda a: _json_edit(a, "info", k_=0), "k_=0"),
    "sparsity-1": (lambda a: _json_edit(a, "params", sparsity=1.0), "member 'params'.*sparsity"),
    "unknown-param": (lambda a: _json_edit(a, "params", evil=1), "unknown parameters \\['evil'\\]"),
    "duplicated-classes": (lambda a: a.__setitem__("classes", np.array([0, 1, 1])), "duplicated classes"),
    "one-class": (lambda a: a.__setitem__("classes", np.array([0])), "member 'classes'"),
    "coef-wrong-shape": (lambda a: a.__setitem__("coef", a["coef"][:, :4]), "member 'coef' must be"),
    "coef-int": (lambda a: a.__setitem__("coef", a["coef"].astype(int)), "member 'coef' must be"),
    "intercept-2d": (lambda a: a.__setitem__("intercept", a["intercept"][None]), "member 'intercept' must be"),
    "nan-vectors": (lambda a: a["library_vectors"].__setitem__((0, 0), np.nan), "NaN or Inf"),
    "names-2d": (lambda a: a.__setitem__("library_names", a["library_names"][None]), "library_names"),
    "params-not-json": (lambda a: a.__setitem__("params", np.asarray("{nope")), "'params' is not valid JSON"),
    "params-deep-json": (lambda a: a.__setitem__("params", np.asarray("[" * 100000 + "]" * 100000)),
                         "'params' is not valid JSON"),
    "params-list": (lambda a: a.__setitem__("params", np.asarray("[1, 2]")), "'params' must be a JSON object"),
    "info-bytes": (lambda a: a.__setitem__("info", np.asarray(b"{}")), "'info' must be JSON text"),
    "format-other": (lambda a: a.__setitem__("format", np.asarray("iis.InterpretablePredictor/9")),
                     "not an iis InterpretablePredictor"),
}


@pytest.mark.parametrize("case", sorted(PREDICTOR_EDITS))
def test_predictor_load_refuses_inconsistent_members(model, case, tmp_path):
    arrays = model_arrays(model, tmp_path)
    edit, match = PREDICTOR_EDITS[case]
    edit(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        iis.InterpretablePredictor.load(tmp_path / "bad.npz")


LIBRARY_EDITS = {
    "nan": (dict(vectors=np.full((3, 4), np.nan)), "NaN or Inf"),
    "names-2d": (dict(vectors=np.ones((2, 4)), names=np.array([["a", "b"]])), "member 'names'"),
    "names-numbers": (dict(vectors=np.ones((2, 4)), names=np.array([1, 2])), "member 'names'"),
    "kind-array": (dict(vectors=np.ones((2, 4)), kind=np.array(["a", "b"])), "member 'kind'"),
    "normalize-unknown": (dict(vectors=np.ones((2, 4)), default_normalize=np.asarray("zz")), "default_normalize"),
    "format-other": (dict(vectors=np.ones((2, 4)), format=np.asarray("other/1")), "member 'format'"),
    "vectors-1d": (dict(vectors=np.ones(4)), "2-D"),
}


@pytest.mark.parametrize("case", sorted(LIBRARY_EDITS))
def test_library_load_refuses_inconsistent_members(case, tmp_path):
    arrays, match = LIBRARY_EDITS[case]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        iis.ConceptLibrary.load(tmp_path / "bad.npz")


def forged_npy(shape, dtype="<f8", data=b"\0" * 64):
    """A .npy whose header asks for ``shape`` but that holds ``data``."""
    from numpy.lib import format as fmt

    buf = io.BytesIO()
    fmt.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def write_npz(path, members, compress=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compress) as zf:
        for k, v in members.items():
            zf.writestr(k + ".npy", v)


@pytest.mark.parametrize("shape", [(10**12,), (10**6, 10**6), (2**62, 4), (0,), (7,)])
@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_forged_headers_are_refused_before_allocation(shape, compress, tmp_path):
    """A member whose header asks for terabytes (or any size but the stored one)."""
    write_npz(tmp_path / "f.npz", {"vectors": forged_npy(shape)}, compress)
    with pytest.raises(ValueError, match=r"member 'vectors' declares shape .* but holds 64 bytes"):
        iis.ConceptLibrary.load(tmp_path / "f.npz")
    (tmp_path / "f.npy").write_bytes(forged_npy(shape))
    with pytest.raises(ValueError, match=r"declares shape .* but holds 64 bytes"):
        iis._validation.read_npy(tmp_path / "f.npy", "features")


def test_zip_bombs_and_lying_sizes_are_refused(tmp_path):
    # a member that decompresses to 100 MB of zeros from about 100 KB: its header is consistent,
    # so it is read as declared (bounded by the stored size) ...
    big = np.zeros((12_500_000,))
    np.savez_compressed(tmp_path / "bomb.npz", vectors=big[None])
    with pytest.raises(ValueError, match="zero norm"):
        iis.ConceptLibrary.load(tmp_path / "bomb.npz")
    # ... but a directory entry claiming more than deflate can produce is refused unread
    raw = bytearray((tmp_path / "bomb.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "bomb.npz") as zf:
        info = zf.getinfo("vectors.npy")
    import struct

    cd = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, min(info.compress_size * 5000, 2**32 - 1))  # uncompressed size
    (tmp_path / "lying.npz").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="member 'vectors' claims .* damaged or forged"):
        iis.ConceptLibrary.load(tmp_path / "lying.npz")


def test_only_the_needed_members_are_read(tmp_path, monkeypatch):
    lib = iis.ConceptLibrary(P)
    lib.save(tmp_path / "lib.npz")
    with zipfile.ZipFile(tmp_path / "lib.npz", "a") as zf:  # a corrupt extra member nobody needs
        zf.writestr("junk.npy", forged_npy((10**12,)))
    back = iis.ConceptLibrary.load(tmp_path / "lib.npz")
    np.testing.assert_array_equal(back.vectors, P)
    opened = []
    real = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: opened.append(
        getattr(name, "filename", name)) or real(self, name, *a, **k))
    iis.ConceptLibrary.load(tmp_path / "lib.npz")
    assert "junk.npy" not in opened and "vectors.npy" in opened


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("kind", ["fifo", "device", "dir"])
def test_loaders_refuse_what_is_not_a_regular_file(kind, tmp_path):
    path = {"fifo": str(tmp_path / "f.npz"), "device": "/dev/zero", "dir": str(tmp_path)}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    elif not os.path.exists(path):
        pytest.skip("no /dev/zero")
    match = "Is a directory" if kind == "dir" else "not a regular file"
    for load in (iis.ConceptLibrary.load, iis.InterpretablePredictor.load):
        with pytest.raises(ValueError, match=match):
            load(path)
    with pytest.raises(ValueError, match=match):
        iis._validation.read_npy(path, "features")
    # the command line: no hang (a FIFO without a writer would block a plain open)
    r = subprocess.run([sys.executable, "-m", "iis", "score", "--train", path, "--eval", path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr and match in r.stderr


def test_save_and_load_with_names_and_file_objects(model, tmp_path):
    lib = iis.ConceptLibrary(P, names=[f"n{i}" for i in range(10)], kind="cluster")
    lib.save(str(tmp_path / "lib"))  # NumPy writes lib.npz
    assert iis.ConceptLibrary.load(str(tmp_path / "lib")).names == lib.names
    buf = io.BytesIO()
    lib.save(buf)
    buf.seek(0)
    back = iis.ConceptLibrary.load(buf)
    assert back.names == lib.names and back.kind == "cluster"
    model.save(str(tmp_path / "model"))
    back = iis.InterpretablePredictor.load(tmp_path / "model")
    np.testing.assert_array_equal(back.predict(XEV), model.predict(XEV))
    buf = io.BytesIO()
    model.save(buf)
    buf.seek(0)
    np.testing.assert_array_equal(iis.InterpretablePredictor.load(buf).predict(XEV), model.predict(XEV))


def test_save_with_numpy_scalar_hyperparameters(tmp_path):
    """What GridSearchCV hands back: NumPy scalars (float32 included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = iis.InterpretablePredictor(P, sparsity=np.float32(0.7), l2=np.float64(1e-3), tol=np.float32(1e-4),
                                         max_iter=np.int64(200), n_threads=np.int32(1), mask=np.str_("hard"))
        clf.fit(XTR, YTR)
    clf.save(tmp_path / "m.npz")
    back = iis.InterpretablePredictor.load(tmp_path / "m.npz")
    assert back.get_params()["sparsity"] == 0.7 and back.k_ == clf.k_ == 3
    np.testing.assert_array_equal(back.predict(XEV), clf.predict(XEV))


# ----------------------------------------------------------------------------- smaller
@pytest.mark.parametrize("s, k", [(0.7, 60), (0.3, 140), (0.9, 20), (0.95, 10), (0.1, 180), (0.98, 4)])
def test_float32_sparsities_keep_the_intended_k(s, k):
    lib = RNG.normal(size=(200, 12))
    for grid in (np.array([0.0, s], np.float32), [0.0, np.float32(s)], (np.float16(0.0), np.float32(s))):
        res = quiet_score(XTR, YTR, XEV, YEV, lib, sparsities=grid, max_iter=50)
        assert res.kept.tolist() == [200, k]
        assert res.sparsities[1] == s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert iis.InterpretablePredictor(lib, sparsity=np.float32(s), max_iter=20).fit(XTR, YTR).k_ == k


# ----------------------------------------------------------------------------- command line
def cli(*argv, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "iis", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, env=e)


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, model):
    d = tmp_path_factory.mktemp("cli")
    np.savez(d / "train.npz", features=XTR, labels=YTR)
    np.savez(d / "eval.npz", features=XEV, labels=YEV)
    evil = iis.InterpretablePredictor(iis.ConceptLibrary(P, names=[f"\x1b]0;pwn\x07c{i}\x1b[2J" for i in range(10)],
                                                         kind="x\x1b[31m"), sparsity=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evil.fit(XTR, np.array(["a\x1b[5m", "b", "c"])[YTR])
    evil.save(d / "evil.npz")
    return d


@pytest.mark.parametrize("flag", ["--out", "--plot"])
@pytest.mark.parametrize("where", ["directory", "missing-folder", "read-only-folder"])
def test_cli_checks_output_paths_before_computing(cli_files, flag, where, tmp_path):
    if where == "read-only-folder" and os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    target = {"directory": tmp_path, "missing-folder": tmp_path / "nope" / "x.json",
              "read-only-folder": tmp_path / "ro" / "x.json"}[where]
    if where == "read-only-folder":
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", stat.S_IRUSR | stat.S_IXUSR)
    # a library spec that fails only after the features are read: the output check comes first
    r = cli("score", "--train", cli_files / "train.npz", "--eval", cli_files / "eval.npz",
            "--library", "prototype:100000", flag, target)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert flag in r.stderr.strip().splitlines()[-1] and "prototype" not in r.stderr


def test_cli_explain_checks_output_paths_first(cli_files, tmp_path):
    r = cli("explain", "--model", cli_files / "evil.npz", "--features", cli_files / "eval.npz",
            "--json", tmp_path)
    assert r.returncode == 2 and "--json" in r.stderr and r.stdout == ""


def test_cli_nan_iis_is_null_in_json_and_exit_3(cli_files, tmp_path):
    # zero features: every prediction is class 0 and no eval label is 0, so acc_probe = 0
    # and ARR, IIS are undefined
    np.savez(tmp_path / "train0.npz", features=np.zeros_like(XTR), labels=(np.arange(XTR.shape[0]) % 3) + 0)
    np.savez(tmp_path / "eval1.npz", features=np.zeros_like(XEV), labels=np.full(YEV.shape[0], 2))
    r = cli("score", "--train", tmp_path / "train0.npz", "--eval", tmp_path / "eval1.npz",
            "--library", "file:" + str(_saved_lib(tmp_path)), "--out", tmp_path / "r.json", "--quiet")
    import json

    assert r.returncode == 3, r.stderr
    assert "not a number" in r.stderr.strip().splitlines()[-1]
    data = json.loads((tmp_path / "r.json").read_text())  # valid JSON
    assert data["iis"] is None and all(v is None for v in data["arr"])


def _saved_lib(tmp_path):
    iis.ConceptLibrary(P).save(tmp_path / "lib.npz")
    return tmp_path / "lib.npz"


def test_result_json_is_valid_with_nan():
    import json

    res = quiet_score(np.zeros_like(XTR), np.arange(XTR.shape[0]) % 3, np.zeros_like(XEV),
                      np.full(XEV.shape[0], 2), P, sparsities=(0.0, 0.5))
    assert np.isnan(res.iis)
    text = res.to_json()
    assert "NaN" not in text and json.loads(text)["iis"] is None


def test_cli_escapes_names_from_model_files(cli_files):
    r = cli("explain", "--model", cli_files / "evil.npz", "--features", cli_files / "eval.npz",
            "--rows", "0:3", "--global")
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "\\x1b]0;pwn\\x07c" in r.stdout  # shown, escaped


def test_cli_turns_any_exception_into_one_line(cli_files, tmp_path):
    """An error that is not a ValueError/TypeError/OSError (here a RecursionError raised by a
    plot backend stand-in) still gives one line and a nonzero exit; IIS_DEBUG=1 shows it."""
    hook = tmp_path / "sitecustomize.py"
    hook.write_text("import iis.cli\n"
                    "def boom(args):\n    raise RuntimeError('boom\\x1b[2J')\n"
                    "iis.cli.cmd_config = boom\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    r = cli("config", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith("iis: error: RuntimeError: boom\\x1b[2J")
    r = cli("config", env=dict(env, IIS_DEBUG="1"))
    assert r.returncode == 1 and "Traceback" in r.stderr


def test_cluster_of_identical_elements_warns_and_its_score_too():
    with pytest.warns(RuntimeWarning, match="left 2 of 3 clusters empty"):
        lib = iis.ConceptLibrary.cluster(np.ones((50, 4)), n_concepts=3)
    x = RNG.normal(size=(90, 4))
    with pytest.warns(RuntimeWarning, match="all point the same way"):
        quiet_score_keep(RuntimeWarning, x, np.arange(90) % 3, x, np.arange(90) % 3, lib)
