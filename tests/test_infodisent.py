"""InfoDisent: gradients, orthogonality, planted directions, threads, explanations, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import iis
from iis import _core
from iis._reference import central_difference

PARAMS = ("cayley", "exp")


def _planted(n, seed, hw=25, d=16, K=4, amp=3.0, noise=0.6):
    """Maps of noise plus, at one random position per image, amp * q_y (Q a random orthonormal basis)."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(np.random.default_rng(100).standard_normal((d, d)))[0]
    y = rng.integers(0, K, n)
    maps = noise * rng.standard_normal((n, hw, d))
    maps[np.arange(n), rng.integers(0, hw, n)] += amp * Q[:, y].T
    return maps.astype(np.float32), y, Q


@pytest.mark.parametrize("param", PARAMS)
def test_rotation_and_gradients_match_references(param):
    rng = np.random.default_rng(0)
    n, hw, d, K = 7, 5, 6, 3
    maps = rng.standard_normal((n, hw, d)).astype(np.float32)
    y = rng.integers(0, K, n).astype(np.int32)
    x, w, b = 0.3 * rng.standard_normal((d, d)), np.abs(rng.standard_normal((K, d))), rng.standard_normal(K)
    A = x - x.T
    U = _core.infodisent_rotation(x, parametrization=param)
    ref = np.linalg.solve(np.eye(d) + A, np.eye(d) - A) if param == "cayley" else scipy.linalg.expm(A)
    np.testing.assert_allclose(U, ref, atol=1e-12)
    loss, gx, gw, gb = _core.infodisent_objective(maps, y, K, x, w, b, parametrization=param)
    z = maps.astype(np.float64) @ U
    v = np.maximum(z.max(1), 0) - np.maximum(-z.min(1), 0)
    logits = v @ w.T + b
    np.testing.assert_allclose(loss, np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(n), y]), rtol=1e-12)

    fd = central_difference

    def obj(xx=x, ww=w, bb=b):
        return _core.infodisent_objective(maps, y, K, xx, ww, bb, parametrization=param)[0]

    np.testing.assert_allclose(fd(lambda a: obj(xx=a), x), gx, atol=1e-7)
    np.testing.assert_allclose(fd(lambda a: obj(ww=a), w), gw, atol=1e-7)
    np.testing.assert_allclose(fd(lambda a: obj(bb=a), b), gb, atol=1e-7)


@pytest.mark.parametrize("param", PARAMS)
def test_recovers_planted_directions(param):
    maps, y, Q = _planted(1000, seed=0)
    mev, yev, _ = _planted(400, seed=1)
    model = iis.InfoDisent(4, parametrization=param, steps=1000, seed=0).fit(maps, y)
    U = model.rotation_
    assert np.abs(U.T @ U - np.eye(16)).max() < 1e-5
    assert model.coef_.min() >= 0
    assert model.score(mev, yev) >= 0.9
    # every planted class direction is (up to sign) a learned channel; U = I matches none
    assert np.abs(U.T @ Q[:, :4]).max(axis=0).min() > 0.9
    assert np.abs(Q[:, :4]).max(axis=0).min() < 0.8
    proba = model.predict_proba(mev)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert np.array_equal(proba.argmax(1), model.predict(mev))
    lib = iis.ConceptLibrary.from_infodisent(model)
    assert lib.kind == "infodisent" and lib.vectors.shape == (16, 16)
    # IIS of the learned basis on the pooled (mean over positions) features
    res = iis.score(maps.mean(1), y, mev.mean(1), yev, lib)
    assert np.isfinite(res.iis)


def test_explanations_name_channels_and_positions():
    maps, y, Q = _planted(1000, seed=2)
    model = iis.InfoDisent(4, steps=600, seed=0).fit(maps, y)
    ex = model.explain(maps[:20], top=2)
    assert len(ex) == 20
    hits = 0
    for e in ex:
        i = e.sample
        assert e.heatmap.shape == (2, 5, 5) and e.contribution[0] >= e.contribution[1]
        np.testing.assert_allclose(e.contribution, e.weight * e.value)
        # the heat map's peak is the reported position
        r, c = e.position[0]
        assert e.heatmap[0][r, c] == e.heatmap[0].max()
        planted = int(np.argmax(np.abs(maps[i] @ Q[:, y[i]])))  # where the class direction was put
        hits += (r * 5 + c == planted) and e.predicted == y[i]
    assert hits >= 16
    import matplotlib

    matplotlib.use("Agg")
    axes = ex[0].plot(image=np.zeros((40, 40, 3)))
    assert len(axes) == 2


@pytest.mark.parametrize("param", ["cayley", "exp"])
def test_same_bits_for_any_thread_count(param):
    rng = np.random.default_rng(3)
    # large enough batches that the pooling and dL/dU loops run on several threads
    maps = rng.standard_normal((400, 49, 128)).astype(np.float32)
    y = rng.integers(0, 3, 400)
    fits = [iis.InfoDisent(3, parametrization=param, steps=5, batch_size=200, n_threads=nt).fit(maps, y)
            for nt in (1, 2)]
    for attr in ("rotation_", "coef_", "intercept_", "loss_history_"):
        assert np.array_equal(getattr(fits[0], attr), getattr(fits[1], attr))


def test_bad_input():
    maps, y, _ = _planted(40, seed=0)
    m = iis.InfoDisent(4, steps=2)
    with pytest.raises(ValueError, match="3-D"):
        m.fit(maps.reshape(40, -1), y)
    with pytest.raises(ValueError, match="H\\*W = 0"):
        m.fit(np.zeros((40, 0, 16), np.float32), y)
    bad = maps.copy()
    bad[5, 3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        m.fit(bad, y)
    with pytest.raises(ValueError, match="single class"):
        m.fit(maps, np.zeros(40, int))
    with pytest.raises(ValueError, match="one entry per image"):
        m.fit(maps, y[:-1])
    with pytest.raises(ValueError, match="lie in"):
        m.fit(maps, y + 4)
    with pytest.raises(TypeError, match="floating"):
        m.fit(maps.astype(np.int32), y)
    with pytest.raises(ValueError, match="parametrization"):
        iis.InfoDisent(4, parametrization="qr")
    with pytest.raises(ValueError, match="n_classes"):
        iis.InfoDisent(1)
    with pytest.raises(RuntimeError, match="not fitted"):
        m.predict(maps)
    before = maps.copy()
    m.fit(maps, y)
    assert np.array_equal(before, maps)
    with pytest.raises(ValueError, match="channels"):
        m.predict(maps[:, :, :8])
    with pytest.raises(ValueError, match="grid"):
        m.explain(maps[:, :24])
    with pytest.raises(TypeError, match="fitted"):
        iis.ConceptLibrary.from_infodisent(iis.InfoDisent(4))
