"""Fuzzing every loader (issue 18) with hypothesis: the features loaders of the command
line (``.npz`` members, ``.npy``), ``ConceptLibrary.load`` and ``InterpretablePredictor.load``
get random bytes, truncated and bit-flipped valid files, forged ``.npy`` headers and
archives whose members have random shapes, dtypes and values.

The rule: a clear Python exception (ValueError, TypeError or OSError with a message) or
the right answer (what ``np.load(allow_pickle=False)`` reads, and an object that works).

Bounded for CI (derandomized, about a minute in all); ``IIS_FUZZ_EXAMPLES=N`` runs N
inputs per test for a long run, e.g.

    IIS_FUZZ_EXAMPLES=3000 pytest tests/test_fuzz_loaders.py --hypothesis-show-statistics
"""
import io
import json
import os
import warnings
import zipfile

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

import iis  # noqa: E402
from iis._validation import read_npy, read_npz  # noqa: E402
from iis.cli import _load_npz  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("IIS_FUZZ_EXAMPLES", "400")), derandomize=True,
                deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLEAR = (ValueError, TypeError, OSError)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, 6))
Y = RNG.integers(0, 3, 60)
P = RNG.normal(size=(5, 6))


def _bytes(save, **kw):
    buf = io.BytesIO()
    save(buf, **kw)
    return buf.getvalue()


def _seeds():
    lib = iis.ConceptLibrary(P, names=[f"c{i}" for i in range(5)], kind="cluster")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m1 = iis.InterpretablePredictor(lib, sparsity=0.4).fit(X, Y)
        m2 = iis.InterpretablePredictor(lib, sparsity=0.4, normalize="standardize").fit(X, np.array(["a", "b", "c"])[Y])
    return {
        "library": _bytes(lambda b: lib.save(b)),
        "predictor": _bytes(lambda b: m1.save(b)),
        "predictor-std": _bytes(lambda b: m2.save(b)),
        "features": _bytes(np.savez, features=X, labels=Y),
        "features-compressed": _bytes(np.savez_compressed, features=X.astype(np.float32), labels=Y),
        "npy": _bytes(np.save, arr=X),
    }


SEEDS = _seeds()


# ----------------------------------------------------------------------------- what a right answer is
def reference(data, members=None):
    """What NumPy reads from ``data`` without pickles (None when it refuses)."""
    try:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        if isinstance(z, np.ndarray):
            return z
        with z:
            return {k: z[k] for k in z.files if members is None or k in members}
    except Exception:
        return None


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()  # bitwise: NaN, NaT


def check_features(data):
    try:
        feats, labels = _load_npz(io.BytesIO(data), "train", need_labels=False)
    except CLEAR as exc:
        assert str(exc)
        return "refused"
    ref = reference(data, ("features", "labels"))
    assert ref is not None and same(feats, ref["features"])
    assert (labels is None) == ("labels" not in ref) and (labels is None or same(labels, ref["labels"]))
    return "loaded"


def check_npy(data):
    try:
        arr = read_npy(io.BytesIO(data), "features")
    except CLEAR as exc:
        assert str(exc)
        return "refused"
    ref = reference(data)
    assert isinstance(ref, np.ndarray) and same(arr, ref)
    return "loaded"


def check_library(data):
    try:
        lib = iis.ConceptLibrary.load(io.BytesIO(data))
    except CLEAR as exc:
        assert str(exc)
        return "refused"
    ref = reference(data, ("vectors",))
    assert ref is not None and np.array_equal(lib.vectors, ref["vectors"].astype(lib.vectors.dtype))
    u = lib.unit()
    assert np.all(np.isfinite(u)) and np.allclose(np.linalg.norm(u, axis=1), 1, atol=1e-5)
    assert len(lib.names) == lib.n_concepts and lib.default_normalize in ("layernorm", "standardize", "none")
    return "loaded"


def check_predictor(data):
    try:
        model = iis.InterpretablePredictor.load(io.BytesIO(data))
    except CLEAR as exc:
        assert str(exc)
        return "refused"
    assert np.all(np.isfinite(model.coef_)) and np.all(np.isfinite(model.intercept_))
    assert 1 <= model.k_ <= model.library_.n_concepts and len(set(model.classes_.tolist())) == len(model.classes_)
    x = RNG.normal(size=(4, model.n_features_in_))
    pred = model.predict(x)
    assert set(pred.tolist()) <= set(model.classes_.tolist())
    assert np.all(np.isfinite(model.predict_proba(x)))
    return "loaded"


CHECKS = {"features": check_features, "npy": check_npy, "library": check_library, "predictor": check_predictor}
SEED_OF = {"features": ["features", "features-compressed"], "npy": ["npy"], "library": ["library"],
           "predictor": ["predictor", "predictor-std"]}


# ----------------------------------------------------------------------------- inputs
@FUZZ
@given(loader=st.sampled_from(sorted(CHECKS)), data=st.binary(max_size=2048))
def test_random_bytes(loader, data):
    CHECKS[loader](data)


@FUZZ
@given(loader=st.sampled_from(sorted(CHECKS)), pick=st.data())
def test_truncated_and_bit_flipped_files(loader, pick):
    good = bytearray(SEEDS[pick.draw(st.sampled_from(SEED_OF[loader]))])
    how = pick.draw(st.sampled_from(["flip", "flips", "truncate", "splice"]))
    if how == "truncate":
        good = good[:pick.draw(st.integers(0, len(good)))]
    elif how == "splice":  # a run of random bytes written over the file
        at = pick.draw(st.integers(0, len(good) - 1))
        junk = pick.draw(st.binary(min_size=1, max_size=64))
        good[at:at + len(junk)] = junk
    else:
        for _ in range(1 if how == "flip" else pick.draw(st.integers(2, 8))):
            pos = pick.draw(st.integers(0, len(good) - 1))
            good[pos] ^= pick.draw(st.integers(1, 255))
    CHECKS[loader](bytes(good))


DTYPES = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int8, np.uint16, np.bool_,
                          np.complex64, "<U3", "S2", ">f8", ">i4", "M8[s]", "m8[ms]"])


def arrays():
    return hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))


def text_members():
    return st.one_of(st.text(max_size=40).map(np.asarray),
                     st.dictionaries(st.text(max_size=12), st.one_of(
                         st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=8)), max_size=6).map(lambda d: np.asarray(json.dumps(d))))


def _npz(members, compressed):
    return _bytes(np.savez_compressed if compressed else np.savez, **members)


@FUZZ
@given(loader=st.sampled_from(["features", "library", "predictor"]), pick=st.data(), compressed=st.booleans())
def test_members_with_wrong_shapes_dtypes_and_values(loader, pick, compressed):
    """A valid file with some members replaced by random arrays (or random JSON text)."""
    with np.load(io.BytesIO(SEEDS[pick.draw(st.sampled_from(SEED_OF[loader]))]), allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    names = sorted(members) + ["extra"]
    for key in pick.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)):
        choice = pick.draw(st.sampled_from(["array", "text", "drop"]))
        if choice == "drop":
            members.pop(key, None)
        else:
            members[key] = pick.draw(arrays() if choice == "array" else text_members())
    CHECKS[loader](_npz(members, compressed))


@FUZZ
@given(loader=st.sampled_from(["features", "npy", "library"]),
       shape=st.lists(st.integers(0, 2**40), max_size=3).map(tuple),
       dtype=st.sampled_from(["<f8", "<f4", "|u1", "<c16", "|V8", "<U4"]),
       fortran=st.booleans(), payload=st.binary(max_size=256), compressed=st.booleans())
def test_forged_headers(loader, shape, dtype, fortran, payload, compressed):
    from numpy.lib import format as fmt

    head = io.BytesIO()
    fmt.write_array_header_1_0(head, {"descr": dtype, "fortran_order": fortran, "shape": shape})
    npy = head.getvalue() + payload
    if loader == "npy":
        CHECKS[loader](npy)
        return
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as zf:
        zf.writestr(("features" if loader == "features" else "vectors") + ".npy", npy)
        if loader == "features":
            zf.writestr("labels.npy", _bytes(np.save, arr=Y))
    CHECKS[loader](buf.getvalue())


def test_seed_files_load_right():
    """The unmodified seeds are right answers (so that the fuzz checks can tell)."""
    assert all(CHECKS[k](SEEDS[s]) == "loaded" for k, seeds in SEED_OF.items() for s in seeds)
