"""End2End concept library: gradients, determinism, real digits, bad input."""
from __future__ import annotations

import numpy as np
import pytest

import iis
from iis import _core
from iis import _reference as ref
from iis._end2end import assignment_concepts
from iis.datasets import load_digits_images, train_eval_split
from iis.elements import patches


def _soft(q, g, tau):
    """softmax((LN(q) + g) / tau) in NumPy (LN without affine, eps 1e-5)."""
    qh = (q - q.mean(1, keepdims=True)) / np.sqrt(q.var(1, keepdims=True) + 1e-5)
    z = (qh + g) / tau
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    E, d, n, K, M, tau = 30, 6, 25, 3, 4, 0.5
    el, f = rng.standard_normal((E, d)), rng.standard_normal((n, d))
    y = rng.integers(0, K, n).astype(np.int32)
    q, w, b = rng.standard_normal((E, M)), 0.3 * rng.standard_normal((K, M)), 0.1 * rng.standard_normal(K)
    g = _core.e2e_noise(seed=3, step=0, n=E, m=M)
    kw = dict(k=3, temperature=tau, l2=0.1, noise=g)
    loss, gq, gw, gb, ga = _core.e2e_objective(el, f, y, K, q, w, b, **kw)
    soft0 = _soft(q, g, tau)
    hard = np.eye(M)[soft0.argmax(1)]
    assert np.all(hard.sum(0) > 0)  # every concept has elements: unit() is smooth here

    def obj(qq=q, ww=w, bb=b, a=None):
        return _core.e2e_objective(el, f, y, K, qq, ww, bb, a_given=a, **kw)[0]

    assert obj(a=hard) == loss  # the hard assignment is the forward pass
    fd = ref.central_difference
    np.testing.assert_allclose(fd(lambda ww: obj(ww=ww), w), gw, atol=1e-7)
    np.testing.assert_allclose(fd(lambda bb: obj(bb=bb), b), gb, atol=1e-7)
    np.testing.assert_allclose(fd(lambda a: obj(a=a), hard), ga, atol=1e-7)
    # straight-through: dL/dq is the derivative of L(hard + soft(q) - soft(q0)) at q0
    np.testing.assert_allclose(fd(lambda qq: obj(a=hard + _soft(qq, g, tau) - soft0), q), gq, atol=1e-7)
    assert np.abs(gq).max() > 1e-4  # not a vacuous comparison


def test_heldout_model_matches_the_core():
    # the early-stopping evaluation (NumPy) is the core's deterministic forward pass
    from iis._end2end import _heldout

    rng = np.random.default_rng(5)
    E, d, n, K, M, k = 50, 8, 40, 3, 6, 4
    el, f = rng.standard_normal((E, d)), rng.standard_normal((n, d))
    y = rng.integers(0, K, n).astype(np.int32)
    q, w, b = rng.standard_normal((E, M)), rng.standard_normal((K, M)), rng.standard_normal(K)
    loss = _core.e2e_objective(el, f, y, K, q, w, b, k=k, temperature=0.1)[0]
    acc, ce = _heldout(el, q, w, b, f, y, k)
    assert ce == pytest.approx(loss, rel=1e-12) and 0 <= acc <= 1


def test_noise_is_gumbel_and_counter_based():
    g = _core.e2e_noise(seed=7, step=5, n=400, m=250)
    assert np.array_equal(g, _core.e2e_noise(seed=7, step=5, n=400, m=250, n_threads=2))
    assert not np.array_equal(g, _core.e2e_noise(seed=7, step=6, n=400, m=250))
    # Gumbel(0, 1): mean Euler's gamma, variance pi^2 / 6 (100,000 draws: 5 standard errors)
    assert abs(g.mean() - 0.5772) < 5 * np.sqrt(np.pi**2 / 6 / g.size)
    assert abs(g.var() - np.pi**2 / 6) < 0.05


def test_same_bits_for_any_thread_count():
    # large enough that every parallel region of a step runs on several threads
    rng = np.random.default_rng(1)
    E, d, n, K, M = 12000, 64, 600, 5, 100
    el, f = rng.standard_normal((E, d)), rng.standard_normal((n, d))
    y = rng.integers(0, K, n).astype(np.int32)
    runs = []
    for nt in (1, 2):
        q, w, b = np.random.default_rng(2).standard_normal((E, M)), \
            np.full((K, M), 0.01), np.zeros(K)
        adam = np.zeros(2 * (q.size + w.size + b.size))
        hist = _core.e2e_fit(el, f, y, K, q, w, b, adam, k=50, temperature=0.1, l2=1e-4, steps=3, step0=0,
                             lr=0.05, beta1=0.9, beta2=0.999, eps=1e-8, seed=4, n_threads=nt)
        runs.append((hist, q, w, b, adam))
    for a, b in zip(*runs):
        assert np.array_equal(a, b)
    # the public API: same library with 1 or 2 threads
    imgs, labels = load_digits_images(size=8, rgb=False, n_per_class=20)
    x = imgs.reshape(len(imgs), -1) / 255.0
    libs = [iis.ConceptLibrary.end2end(x[::2], x, labels, n_concepts=8, steps=60, eval_every=20, n_threads=nt)
            for nt in (1, 2)]
    assert np.array_equal(libs[0].vectors, libs[1].vectors) and libs[0].names == libs[1].names


@pytest.fixture(scope="module")
def digits():
    imgs, labels = load_digits_images(size=16, rgb=False)
    tr, ev = train_eval_split(labels, 0.3, seed=0)
    x = imgs.reshape(len(imgs), -1) / 255.0
    el = patches(imgs[tr][:200], labels=labels[tr][:200], grid=2, size=16)  # 800 elements
    elements = el.images[..., 0].reshape(len(el), -1) / 255.0
    return x[tr], labels[tr], x[ev], labels[ev], elements


def test_beats_random_assignment_on_real_digits(digits):
    ftr, ytr, fev, yev, elements = digits
    M = 10
    lib = iis.ConceptLibrary.end2end(elements, ftr, ytr, n_concepts=M, seed=0)
    assert lib.kind == "end2end" and len(lib) == M - lib.meta["n_empty"]
    # the library is the deterministic arg-max assignment of the best held-out state
    assign = np.asarray(lib.meta["assignment"])
    vec, used = assignment_concepts(elements, assign, M)
    np.testing.assert_allclose(lib.vectors, vec)
    first = np.flatnonzero(assign == used[0])
    assert lib.names[0].startswith(f"end2end_{used[0]}: elements {first[0]}, {first[1]}")
    assert lib.meta["best_heldout_accuracy"] > lib.meta["heldout_accuracy"][0] and lib.meta["best_step"] > 0
    score = iis.score(ftr, ytr, fev, yev, lib).iis
    random = [iis.score(ftr, ytr, fev, yev, assignment_concepts(
        elements, np.random.default_rng(s).integers(0, M, len(elements)), M)[0]).iis for s in range(5)]
    assert score > max(random), (score, random)


def test_bad_input(digits):
    ftr, ytr, _, _, elements = digits
    e2e = iis.ConceptLibrary.end2end
    with pytest.raises(ValueError, match="dimension"):
        e2e(elements[:, :10], ftr, ytr, n_concepts=5)
    with pytest.raises(ValueError, match="entries"):
        e2e(elements, ftr, ytr[:-1], n_concepts=5)
    bad = ftr.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        e2e(elements, bad, ytr, n_concepts=5)
    with pytest.raises(ValueError, match="NaN"):
        e2e(np.where(np.arange(len(elements))[:, None] == 2, np.inf, elements), ftr, ytr, n_concepts=5)
    with pytest.raises(ValueError, match="single class"):
        e2e(elements, ftr, np.zeros(len(ftr)), n_concepts=5)
    with pytest.raises(ValueError, match="exceeds"):
        e2e(elements[:4], ftr, ytr, n_concepts=5)
    with pytest.raises(ValueError, match="2-D"):
        e2e(elements[0], ftr, ytr, n_concepts=5)
    for kw, what in [({"temperature": 0.0}, "temperature"), ({"sparsity": 1.0}, "sparsity"),
                     ({"n_concepts": 0}, "n_concepts"), ({"lr": -1.0}, "lr"), ({"steps": -1}, "steps"),
                     ({"element_names": ["a"]}, "element_names")]:
        with pytest.raises(ValueError, match=what):
            e2e(elements, ftr, ytr, **{"n_concepts": 5, **kw})
    before = elements.copy()
    e2e(elements, ftr, ytr, n_concepts=5, steps=1)
    assert np.array_equal(before, elements)  # inputs are not modified
    # the core refuses what the Python layer would have caught
    q, w, b = np.zeros((len(elements), 5)), np.zeros((3, 5)), np.zeros(3)
    with pytest.raises(ValueError, match="k <= M"):
        _core.e2e_objective(elements, ftr, ytr.astype(np.int32) % 3, 3, q, w, b, k=6, temperature=0.1)
    with pytest.raises(ValueError, match="label"):
        _core.e2e_objective(elements, ftr, ytr.astype(np.int32), 3, q, w, b, k=2, temperature=0.1)
    with pytest.raises(ValueError, match="W \\(K, M\\)"):
        _core.e2e_objective(elements, ftr, ytr.astype(np.int32) % 3, 3, q, np.zeros((3, 4)), b, k=2, temperature=0.1)
