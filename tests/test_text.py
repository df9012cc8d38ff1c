"""Text concept library (Label-free CBM recipe, docs/method.md section 6) and concept lists."""
from __future__ import annotations

import numpy as np
import pytest

import iis
from iis import _core
from iis._reference import central_difference
from iis import _reference as ref
from iis.concepts import clean_concepts, load_concepts, save_concepts


def planted(n=1500, d=16, e=16, k=4, seed=0, noise=0.3, dtype=np.float64):
    """Features with k planted concept directions A (k x d, orthonormal) and CLIP-like
    embeddings that see the same concepts along B, plus two decoys:
    ``clip_only`` (CLIP sees it, the features do not) and ``unseen`` (no image shows it)."""
    rng = np.random.default_rng(seed)
    A = np.linalg.qr(rng.normal(size=(d, k)))[0].T
    Bq = np.linalg.qr(rng.normal(size=(e, k + 3)))[0].T
    B, clip_only, unseen, bg = Bq[:k], Bq[k], Bq[k + 1], Bq[k + 2]
    Z = (rng.random((n, k)) < 0.3) * rng.uniform(0.5, 1.5, (n, k))
    zc = (rng.random(n) < 0.3) * rng.uniform(0.5, 1.5, n)
    F = Z @ A + noise * rng.normal(size=(n, d))
    img = Z @ B + np.outer(zc, clip_only) + 3.0 * bg + 0.2 * rng.normal(size=(n, e))
    txt = np.vstack([B + 0.05 * rng.normal(size=(k, e)), clip_only, unseen - 0.5 * bg])
    names = [f"planted_{i}" for i in range(k)] + ["clip_only", "unseen"]
    return names, F.astype(dtype), img, txt, A, Z


@pytest.fixture(scope="module")
def planted_lib():
    names, F, img, txt, A, Z = planted()
    lib = iis.ConceptLibrary.text(names, F, img, txt, interpretability_cutoff=0.3, seed=0)
    return lib, (names, F, img, txt, A, Z)


# ----------------------------------------------------------------------------- objective
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_objective_matches_reference(dtype):
    rng = np.random.default_rng(1)
    f = rng.normal(size=(60, 9)).astype(dtype)
    t = rng.normal(size=(60, 5)).astype(dtype)
    t[:, 3] = 0.25  # constant target column: similarity 0
    w = rng.normal(size=(5, 9)).astype(dtype)
    w[4] = 0.0  # zero direction: constant prediction, similarity 0, zero gradient
    sim, obj, grad = _core.text_objective(f, t, w, n_threads=1)
    rsim, robj, rgrad = ref.text_objective(f, t, w)
    tol = 1e-10 if dtype == np.float64 else 2e-4
    assert grad.dtype == dtype and sim.dtype == np.float64
    np.testing.assert_allclose(sim, rsim, atol=tol)
    assert obj == pytest.approx(robj, abs=tol)
    np.testing.assert_allclose(grad, rgrad, atol=tol * max(1.0, np.abs(rgrad).max()))
    assert sim[3] == 0.0 and sim[4] == 0.0 and np.all(grad[4] == 0)
    assert np.all(np.abs(sim) <= 1 + 1e-6)


def test_objective_strided_rows():
    rng = np.random.default_rng(2)
    big = rng.normal(size=(40, 12))
    f = big[:, :7]  # rows contiguous, leading dimension 12
    t_big = rng.normal(size=(40, 6))
    t = t_big[:, :3]
    w = rng.normal(size=(3, 7))
    sim, obj, grad = _core.text_objective(f, t, w, n_threads=1)
    rsim, robj, rgrad = ref.text_objective(f, t, w)
    np.testing.assert_allclose(sim, rsim, atol=1e-12)
    np.testing.assert_allclose(grad, rgrad, atol=1e-12)


def test_gradient_finite_differences():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(80, 6))
    t = rng.normal(size=(80, 4)) ** 3
    w = rng.normal(size=(4, 6))
    _, _, grad = _core.text_objective(f, t, w, n_threads=1)
    num = central_difference(lambda ww: _core.text_objective(f, t, ww, n_threads=1)[1], w)
    np.testing.assert_allclose(grad, num, atol=1e-8, rtol=1e-6)
    assert np.abs(grad).max() > 1e-3


def test_gradient_is_the_ascent_direction():
    """A step along +grad raises J; the published sign (descent on -J turned around) lowers it."""
    rng = np.random.default_rng(4)
    f = rng.normal(size=(100, 8))
    t = f @ rng.normal(size=(8, 3)) + 0.5 * rng.normal(size=(100, 3))
    w = rng.normal(size=(3, 8))
    _, j0, g = _core.text_objective(f, t, w, n_threads=1)
    j_up = _core.text_objective(f, t, w + 1e-2 * g / np.abs(g).max(), n_threads=1)[1]
    j_down = _core.text_objective(f, t, w - 1e-2 * g / np.abs(g).max(), n_threads=1)[1]
    assert j_up > j0 > j_down


def test_objective_scale_invariant():
    rng = np.random.default_rng(5)
    f, t, w = rng.normal(size=(50, 5)), rng.normal(size=(50, 2)), rng.normal(size=(2, 5))
    s1 = _core.text_objective(f, t, w, n_threads=1)[0]
    s2 = _core.text_objective(3.0 * f + 1.0, 7.0 * t - 2.0, 0.1 * w, n_threads=1)[0]
    np.testing.assert_allclose(s1, s2, atol=1e-10)


# ----------------------------------------------------------------------------- learning
def test_planted_concepts_recovered(planted_lib):
    lib, (names, F, img, txt, A, Z) = planted_lib
    assert lib.kind == "text" and lib.default_normalize == "standardize"
    assert lib.names == ["planted_0", "planted_1", "planted_2", "planted_3"]
    assert lib.meta["dropped_top5"] == ["unseen"]
    assert lib.meta["dropped_interpretability"] == ["clip_only"]
    cos = ref.unit(lib.vectors) @ A.T  # learned direction vs planted direction
    assert np.array_equal(np.argmax(np.abs(cos), axis=1), np.arange(4))
    assert np.all(np.diag(cos) > 0.85), np.diag(cos)
    off = np.abs(cos - np.diag(np.diag(cos)))
    assert off.max() < 0.3
    # the activations follow the planted strengths nearly as well as the planted directions do
    act, ideal = F @ lib.vectors.T, F @ A.T
    corr = np.array([np.corrcoef(act[:, c], Z[:, c])[0, 1] for c in range(4)])
    best = np.array([np.corrcoef(ideal[:, c], Z[:, c])[0, 1] for c in range(4)])
    assert np.all(corr > 0.95 * best), (corr, best)


def test_objective_rises_during_training(planted_lib):
    lib, _ = planted_lib
    m = lib.meta
    tr = np.asarray(m["train_objective"])
    va = np.asarray(m["heldout_objective"])
    assert tr.size == m["n_steps"] > 100
    assert tr[0] < 0.2  # random initial directions
    assert tr[-1] > tr[0] + 0.4
    assert np.mean(np.diff(tr) >= -1e-9) > 0.95  # rises step after step
    assert m["heldout_steps"][0] == 0 and va[0] < 0.1
    assert m["best_heldout_objective"] == pytest.approx(va.max())
    assert m["best_step"] == m["heldout_steps"][int(np.argmax(va))]
    assert m["best_heldout_objective"] > va[0] + 0.3
    assert all(s % 50 == 0 or s == m["n_steps"] for s in m["heldout_steps"])
    # per-concept held-out similarity recorded for every concept that passed top-5
    assert set(m["heldout_similarity"]) == {"planted_0", "planted_1", "planted_2", "planted_3", "clip_only"}


@pytest.mark.parametrize("dtype", [np.float32])
def test_float32_learning(dtype, planted_lib):
    lib64, (names, F, img, txt, A, Z) = planted_lib
    lib = iis.ConceptLibrary.text(names, F.astype(dtype), img, txt, interpretability_cutoff=0.3, seed=0)
    assert lib.vectors.dtype == dtype
    assert lib.names == lib64.names
    cos = np.sum(ref.unit(lib.vectors) * ref.unit(lib64.vectors), axis=1)
    assert np.all(cos > 0.99)


def test_deterministic_for_a_seed(planted_lib):
    lib, (names, F, img, txt, A, Z) = planted_lib
    again = iis.ConceptLibrary.text(names, F, img, txt, interpretability_cutoff=0.3, seed=0)
    np.testing.assert_array_equal(again.vectors, lib.vectors)
    other = iis.ConceptLibrary.text(names, F, img, txt, interpretability_cutoff=0.3, seed=1, steps=50)
    assert not np.array_equal(other.vectors[:1], lib.vectors[:1])


def test_same_result_with_one_or_two_threads():
    # large enough (n * C >= 200000) for the kernel to use several threads
    rng = np.random.default_rng(6)
    n, d, c = 20000, 6, 12
    f = rng.normal(size=(n, d))
    t = f @ rng.normal(size=(d, c)) + rng.normal(size=(n, c))
    args = (f[:16000], t[:16000], f[16000:], t[16000:], c, None, 8, 4, 1, 1e-3, 0.9, 0.999, 1e-8, 7)
    w1 = _core.text_fit(*args, 1, None)
    w2 = _core.text_fit(*args, 2, None)
    np.testing.assert_array_equal(w1[0], w2[0])
    np.testing.assert_array_equal(w1[2], w2[2])


def test_fit_init_and_early_stopping_bookkeeping():
    rng = np.random.default_rng(7)
    f = rng.normal(size=(200, 5))
    t = f @ rng.normal(size=(5, 3)) + 0.3 * rng.normal(size=(200, 3))
    w0 = rng.normal(size=(3, 5))
    w0_copy = w0.copy()
    # steps = 0: the initial W comes back, one evaluation
    w, vsim, th, vh, vs, n_steps, best_step, best_val, n_ev = _core.text_fit(f[:150], t[:150], f[150:], t[150:], n_concepts=3, w0=w0, steps=0, eval_every=10, patience=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, seed=0, n_threads=1)
    np.testing.assert_array_equal(w, w0)
    assert (n_steps, best_step, n_ev) == (0, 0, 1)
    assert best_val == pytest.approx(_core.text_objective(f[150:], t[150:], w0, n_threads=1)[1])
    np.testing.assert_allclose(vsim, _core.text_objective(f[150:], t[150:], w0, n_threads=1)[0])
    # 25 steps evaluated every 10: at 0, 10, 20 and 25
    out = _core.text_fit(f[:150], t[:150], f[150:], t[150:], n_concepts=3, w0=w0, steps=25, eval_every=10, patience=100, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, seed=0, n_threads=1)
    assert out[5] == 25 and out[8] == 4
    assert out[4][:4].tolist() == [0, 10, 20, 25]
    # the returned W is the best evaluated one and its held-out similarities are those reported
    sim_best, j_best, _ = _core.text_objective(f[150:], t[150:], out[0], n_threads=1)
    assert j_best == pytest.approx(out[7]) == pytest.approx(out[3][:4].max())
    np.testing.assert_allclose(sim_best, out[1])
    np.testing.assert_array_equal(w0, w0_copy)  # the warm start is not written to


def test_progress_error_stops_learning():
    rng = np.random.default_rng(8)
    f, t = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))

    def boom(done, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        _core.text_fit(f[:30], t[:30], f[30:], t[30:], n_concepts=2, w0=None, steps=100, eval_every=10, patience=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, seed=0, n_threads=1, progress=boom)


def test_standardised_activations_are_scale_invariant(planted_lib):
    """unit(W_c) gives the same standardised activations as F W_c^T (as LF-CBM computes them)."""
    lib, (names, F, img, txt, A, Z) = planted_lib
    raw = F @ lib.vectors.T
    expected = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    got = iis.project(F, lib)  # library default: standardize with F's own statistics
    np.testing.assert_allclose(got, expected, atol=1e-10)
    stats = iis.activation_stats(F[:1000], lib)
    ev = iis.project(F[1000:], lib, stats=stats)
    raw_tr = raw[:1000]
    np.testing.assert_allclose(ev, (raw[1000:] - raw_tr.mean(0)) / raw_tr.std(0), atol=1e-10)


def test_score_with_text_library(planted_lib):
    lib, (names, F, img, txt, A, Z) = planted_lib
    y = np.argmax(Z + 0.01 * np.arange(Z.shape[1]), axis=1)
    labels = np.array(["cat", "dog", "car", "tree"])[y]
    res = iis.score(F[:1000], labels[:1000], F[1000:], labels[1000:], lib, sparsities=(0.0, 0.5))
    assert res.library_kind == "text" and res.normalize == "standardize"
    assert res.concept_names == lib.names
    assert res.n_concepts == 4 and res.ip_accuracy[0] > 0.5
    # the library saves and loads with its names
    clf = iis.InterpretablePredictor(lib, sparsity=0.5).fit(F[:1000], labels[:1000])
    ex = clf.explain(F[1000:1001], top=2)[0]
    assert set(ex.concepts) <= set(lib.names)


def test_inputs_not_modified():
    names, F, img, txt, A, Z = planted(n=300)
    copies = [F.copy(), img.copy(), txt.copy(), list(names)]
    iis.ConceptLibrary.text(names, F, img, txt, steps=20, interpretability_cutoff=-1.0)
    for a, b in zip([F, img, txt, names], copies):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_top5_filter_matches_reference():
    names, F, img, txt, A, Z = planted(n=400)
    lib = iis.ConceptLibrary.text(names, F, img, txt, steps=10, interpretability_cutoff=-1.0,
                                  top5_cutoff=0.25)
    top5 = ref.text_top5(img, txt)
    got = np.array([lib.meta["top5_similarity"][n] for n in names])
    np.testing.assert_allclose(got, top5, atol=1e-12)
    assert lib.names == [n for n, v in zip(names, top5) if v > 0.25]
    # blockwise evaluation and fewer than 5 images agree with the reference
    from iis._text import top5_similarity

    u_img, u_txt = ref.unit(img), ref.unit(txt)
    np.testing.assert_allclose(top5_similarity(u_img, u_txt, block=2), top5, atol=1e-12)
    np.testing.assert_allclose(top5_similarity(u_img[:3], u_txt), ref.text_top5(img[:3], txt), atol=1e-12)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs():
    names, F, img, txt, A, Z = planted(n=200)
    T = iis.ConceptLibrary.text
    with pytest.raises(ValueError, match="rows"):
        T(names, F[:100], img, txt)
    with pytest.raises(ValueError, match="6 concepts"):
        T(names, F, img, txt[:5])
    with pytest.raises(ValueError, match="same CLIP model"):
        T(names, F, img, txt[:, :8])
    with pytest.raises(TypeError, match="sequence of strings"):
        T("planted_0", F, img, txt[:1])
    with pytest.raises(ValueError, match="duplicates"):
        T(names[:-1] + ["planted_0"], F, img, txt)
    with pytest.raises(ValueError, match="blank"):
        T(names[:-1] + ["  "], F, img, txt)
    with pytest.raises(TypeError, match="expected str"):
        T(names[:-1] + [3], F, img, txt)
    bad = txt.copy()
    bad[2] = 0.0
    with pytest.raises(ValueError, match="zero-norm"):
        T(names, F, img, bad)
    nan = F.copy()
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        T(names, nan, img, txt)
    with pytest.raises(ValueError, match="holdout"):
        T(names, F, img, txt, holdout=1.0)
    with pytest.raises(ValueError, match="top5_cutoff"):
        T(names, F, img, txt, top5_cutoff=1.5)
    with pytest.raises(ValueError, match="steps"):
        T(names, F, img, txt, steps=-1)
    with pytest.raises(TypeError, match="steps"):
        T(names, F, img, txt, steps=10.5)
    with pytest.raises(ValueError, match="no concept passes top5_cutoff"):
        T(names, F, img, txt, top5_cutoff=0.99)
    with pytest.raises(ValueError, match="no concept passes interpretability_cutoff"):
        T(names, F, img, txt, steps=5, interpretability_cutoff=0.999)
    with pytest.raises(ValueError, match="too few"):
        T(names, F[:3], img[:3], txt)
    with pytest.raises(TypeError):
        _core.text_objective(F, img, np.zeros((6, 16), np.float32), n_threads=1)
    with pytest.raises(ValueError):
        _core.text_objective(F, img[:, :6], np.zeros((5, 16)), n_threads=1)


# ----------------------------------------------------------------------------- concept lists
def test_load_concepts(tmp_path):
    p = tmp_path / "concepts.txt"
    p.write_bytes("\ufeffstriped fur\n\n  wheels  \nstriped   fur\nWheels\r\n\t\nfeathers\n".encode("utf-8"))
    assert load_concepts(p) == ["striped fur", "wheels", "Wheels", "feathers"]
    assert load_concepts(str(p), lowercase=True) == ["striped fur", "wheels", "feathers"]
    assert iis.load_concepts is load_concepts
    out = tmp_path / "out.txt"
    save_concepts(["b", "a", "b", " "], out)
    assert out.read_text() == "b\na\n"
    assert load_concepts(out) == ["b", "a"]


def test_load_concepts_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    with pytest.raises(ValueError, match="no concept"):
        load_concepts(empty)
    with pytest.raises(FileNotFoundError):
        load_concepts(tmp_path / "missing.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81abc")
    with pytest.raises(ValueError, match="text file"):
        load_concepts(binary)
    with pytest.raises(TypeError):
        load_concepts(3)
    with pytest.raises(TypeError):
        clean_concepts("one string")
    with pytest.raises(TypeError):
        clean_concepts(["a", None])


def test_no_reference_or_memory_growth():
    import sys
    import tracemalloc

    rng = np.random.default_rng(9)
    f, t, w = rng.normal(size=(30, 4)), rng.normal(size=(30, 3)), rng.normal(size=(3, 4))
    before = [sys.getrefcount(a) for a in (f, t, w)]

    def run(times):
        for _ in range(times):
            _core.text_objective(f, t, w, n_threads=1)
            _core.text_fit(f[:20], t[:20], f[20:], t[20:], n_concepts=3, w0=w, steps=3, eval_every=1, patience=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, seed=0, n_threads=1)
            with pytest.raises(ValueError):
                _core.text_fit(f[:20], t[:19], f[20:], t[20:], n_concepts=3, w0=w, steps=3, eval_every=1, patience=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, seed=0, n_threads=1)

    run(50)
    tracemalloc.start()
    m0 = tracemalloc.get_traced_memory()[0]
    run(1000)
    grown = tracemalloc.get_traced_memory()[0] - m0
    tracemalloc.stop()
    assert [sys.getrefcount(a) for a in (f, t, w)] == before
    assert grown < 100_000, grown


def test_progress_printed(capsys):
    names, F, img, txt, A, Z = planted(n=200)
    iis.ConceptLibrary.text(names, F, img, txt, steps=60, patience=5, interpretability_cutoff=-1.0,
                            progress=True)
    err = capsys.readouterr().err
    assert "[iis] text library: step 50/60" in err and "step 60/60" in err
    with pytest.raises(TypeError, match="progress"):
        iis.ConceptLibrary.text(names, F, img, txt, progress="yes")
