"""InterpretablePredictor (docs/method.md section 7): estimator interface, explanations, save/load, CLI."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import iis
from iis import _reference as ref
from iis._predictor import NotFittedError


def make_data(n=500, d=12, K=3, M=15, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, d)) * 1.3
    y = rng.integers(0, K, n)
    x = (means[y] + rng.normal(size=(n, d))).astype(dtype)
    lib = iis.ConceptLibrary(rng.normal(size=(M, d)), [f"concept {i}" for i in range(M)])
    return x, y, lib


@pytest.fixture(scope="module")
def fitted():
    x, y, lib = make_data()
    labels = np.array(["cat", "dog", "ship"])[y]
    clf = iis.InterpretablePredictor(lib, sparsity=0.6).fit(x[:350], labels[:350])
    return clf, x, labels


# ----------------------------------------------------------------------------- fit / predict
def test_fit_predict_proba_score(fitted):
    clf, x, labels = fitted
    assert list(clf.classes_) == ["cat", "dog", "ship"]
    assert clf.k_ == 15 - 9 and clf.coef_.shape == (3, 15) and clf.intercept_.shape == (3,)
    assert clf.converged_ and clf.n_features_in_ == 12
    pred = clf.predict(x[350:])
    proba = clf.predict_proba(x[350:])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.array_equal(clf.classes_[np.argmax(proba, axis=1)], pred)
    acc = clf.score(x[350:], labels[350:])
    assert acc == pytest.approx(np.mean(pred == labels[350:])) and acc > 0.7
    w = np.where(labels[350:] == "cat", 2.0, 1.0)
    assert clf.score(x[350:], labels[350:], sample_weight=w) == pytest.approx(
        np.sum(w * (pred == labels[350:])) / w.sum())
    zebras = labels[350:].astype(object)
    zebras[:10] = "zebra"  # unseen in fit: counted as errors, with a warning (as iis.score)
    with pytest.warns(UserWarning, match=r"10 of 150 y \(classes \['zebra'\]\)"):
        assert clf.score(x[350:], zebras) == pytest.approx(np.mean(pred == zebras))
    with pytest.raises(ValueError, match="none of the y"):
        clf.score(x[350:], np.full(150, "zebra"))


@pytest.mark.parametrize("normalize,mask", [("layernorm", "hard"), ("standardize", "hard"),
                                            ("none", "soft")])
def test_matches_reference_solution(normalize, mask):
    x, y, lib = make_data(seed=1)
    clf = iis.InterpretablePredictor(lib, sparsity=0.5, normalize=normalize, mask=mask, l2=1e-2,
                                     tol=1e-8, max_iter=5000).fit(x[:350], y[:350])
    stats = ref.colstats(ref.project(x[:350], lib.vectors, "none")) if normalize == "standardize" else None
    atr = ref.project(x[:350], lib.vectors, normalize, stats)
    aev = ref.project(x[350:], lib.vectors, normalize, stats)
    k = ref.keep_count(15, 0.5)
    w, b = ref.logreg_fit(ref.mask(atr, k, mask == "soft"), y[:350], 3, 1e-2, tol=1e-10)
    logits = ref.mask(aev, k, mask == "soft") @ w + b
    np.testing.assert_allclose(clf.coef_, w.T, atol=1e-5)
    np.testing.assert_allclose(clf.decision_function(x[350:]), logits, atol=1e-4)
    if normalize == "standardize":
        np.testing.assert_allclose(clf.mean_, stats[0])
        np.testing.assert_allclose(clf.std_, stats[1])
    else:
        assert clf.mean_ is None


def test_same_accuracy_as_score_path():
    """At one ratio s the predictor is the interpretable predictor of iis.score."""
    x, y, lib = make_data(seed=2)
    res = iis.score(x[:350], y[:350], x[350:], y[350:], lib, sparsities=(0.0, 0.6), tol=1e-8)
    for s, acc in zip(res.sparsities, res.ip_accuracy):
        clf = iis.InterpretablePredictor(lib, sparsity=float(s), tol=1e-8).fit(x[:350], y[:350])
        assert clf.score(x[350:], y[350:]) == pytest.approx(acc, abs=1 / 150 + 1e-12)


def test_no_concept_kept_is_the_bias_only_model_as_in_score():
    """k = 0 (keep="published", M = 15, s = 0.95: 15 - 14 - 1): iis.score fits the bias-only
    predictor at that ratio, and InterpretablePredictor fits the same model: the train
    class priors, predicting the most frequent train class (2 here, no tie)."""
    x, y, lib = make_data(seed=0)
    res = iis.score(x[:350], y[:350], x[350:], y[350:], lib, sparsities=(0.0, 0.95), keep="published")
    clf = iis.InterpretablePredictor(lib, sparsity=0.95, keep="published").fit(x[:350], y[:350])
    assert res.kept[-1] == 0 and clf.k_ == 0 and np.all(clf.coef_ == 0)
    prior = np.bincount(y[:350]) / 350
    np.testing.assert_allclose(clf.predict_proba(x[350:]), np.tile(prior, (150, 1)), atol=1e-4)
    assert np.all(clf.predict(x[350:]) == np.argmax(prior))
    assert clf.score(x[350:], y[350:]) == res.ip_accuracy[-1] == np.mean(y[350:] == np.argmax(prior))
    e = clf.explain(x[350:351])[0]
    assert e.concepts == [] and e.n_kept == 0 and e.rest == 0 and e.logit == pytest.approx(e.bias)
    assert "bias" in e.to_text()


# ----------------------------------------------------------------------------- explanations
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("normalize", ["layernorm", "standardize"])
def test_contributions_add_up_to_logits(dtype, normalize):
    x, y, lib = make_data(dtype=dtype)
    clf = iis.InterpretablePredictor(lib, sparsity=0.3, normalize=normalize).fit(x[:300], y[:300])
    logits = clf.decision_function(x[300:340]).astype(np.float64)
    tol = 1e-9 if dtype == np.float64 else 2e-4
    for top in (None, 3):
        exps = clf.explain(x[300:340], top=top)
        assert len(exps) == 40
        for i, e in enumerate(exps):
            yi = int(np.argmax(logits[i]))
            assert e.predicted == clf.classes_[yi] == clf.predict(x[300 + i:301 + i])[0]
            assert e.logit == pytest.approx(logits[i, yi], abs=tol)
            total = e.contribution.sum() + e.rest + e.bias
            assert total == pytest.approx(logits[i, yi], abs=tol * 10)
            assert len(e.concepts) == (clf.k_ if top is None else 3)
            if top is None:
                assert e.rest == 0.0
            # contribution = W[y, m] * a_m with the names of the library
            np.testing.assert_allclose(e.contribution, e.weight * e.activation, rtol=1e-12)
            np.testing.assert_allclose(e.weight, clf.coef_[yi, e.concept_index], rtol=1e-6)
            assert e.concepts == [lib.names[j] for j in e.concept_index]
            assert np.all(np.diff(e.contribution) <= 0)  # ranked, largest first


def test_explain_by_magnitude_and_activations(fitted):
    clf, x, labels = fitted
    e = clf.explain(x[:1], top=None, by="magnitude")[0]
    assert np.all(np.diff(np.abs(e.contribution)) <= 0)
    # the listed activations are the masked, normalised activations of the sample
    a = ref.project(x[:1], clf.library_.vectors, "layernorm")[0]
    kept = ref.topk_index(a[None], clf.k_)[0]
    assert set(e.concept_index.tolist()) == set(kept.tolist())
    np.testing.assert_allclose(e.activation, a[e.concept_index], atol=1e-10)
    assert 0 < e.probability <= 1
    d = e.to_dict()
    assert json.loads(json.dumps(d))["concepts"][0]["name"] == e.concepts[0]
    text = e.to_text()
    assert text.splitlines()[0].startswith("sample 0: predicted") and e.concepts[0] in text
    assert "bias" in str(e)


def test_global_explanation(fitted):
    clf, x, labels = fitted
    g = clf.global_explanation(top=4)
    assert list(g) == ["cat", "dog", "ship"]
    for c, (label, items) in enumerate(g.items()):
        assert len(items) == 4
        weights = [w for _, w in items]
        assert weights == sorted(weights, reverse=True)
        assert weights[0] == pytest.approx(clf.coef_[c].max())
        names = clf.library_.names
        for name, w in items:
            assert clf.coef_[c, names.index(name)] == pytest.approx(w)
    gm = clf.global_explanation(top=None, by="magnitude")
    assert all(len(v) == 15 for v in gm.values())
    assert "class 'cat':" in clf.global_explanation_text(2)


def test_explanation_plot_renders(fitted, tmp_path):
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    clf, x, labels = fitted
    e = clf.explain(x[:1], top=4)[0]
    ax = e.plot()
    assert len(ax.patches) == 4 + 2  # top concepts, the other kept ones, the bias
    assert [t.get_text() for t in ax.get_yticklabels()][:4] == e.concepts
    path = tmp_path / "explain.png"
    ax.figure.savefig(path, dpi=60)
    assert path.stat().st_size > 1000
    plt.close(ax.figure)
    ax2 = clf.explain(x[:1], top=None)[0].plot(show_rest=False)
    assert len(ax2.patches) == clf.k_
    plt.close(ax2.figure)


# ----------------------------------------------------------------------------- scikit-learn
def test_sklearn_clone_and_cross_val_score():
    sk = pytest.importorskip("sklearn")
    from sklearn.base import clone, is_classifier
    from sklearn.model_selection import GridSearchCV, cross_val_score

    x, y, lib = make_data(seed=3)
    clf = iis.InterpretablePredictor(lib, sparsity=0.5)
    assert is_classifier(clf)
    c2 = clone(clf)
    assert c2 is not clf and c2.get_params()["sparsity"] == 0.5 and not hasattr(c2, "coef_")
    scores = cross_val_score(clf, x, y, cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.6)
    gs = GridSearchCV(clf, {"sparsity": [0.0, 0.9]}, cv=2).fit(x, y)
    assert gs.best_params_["sparsity"] in (0.0, 0.9)
    assert sk.__version__


def test_get_set_params():
    x, y, lib = make_data()
    clf = iis.InterpretablePredictor(lib)
    p = clf.get_params()
    assert set(p) == {"library", "sparsity", "normalize", "mask", "keep", "l2", "tol", "max_iter",
                      "n_threads", "penalty", "alpha", "nonzeros_per_class"}
    assert p["library"] is lib
    assert clf.set_params(sparsity=0.7, mask="soft") is clf
    assert clf.sparsity == 0.7 and clf.mask == "soft"
    with pytest.raises(ValueError, match="invalid parameter"):
        clf.set_params(gamma=1.0)
    assert "sparsity=0.7" in repr(clf)


# ----------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("normalize", ["layernorm", "standardize"])
def test_save_load_roundtrip(tmp_path, normalize):
    x, y, lib = make_data(dtype=np.float32)
    clf = iis.InterpretablePredictor(lib, sparsity=0.4, normalize=normalize).fit(x[:300], y[:300] + 10)
    path = tmp_path / "model.npz"
    clf.save(path)
    back = iis.InterpretablePredictor.load(path)
    np.testing.assert_array_equal(back.decision_function(x[300:]), clf.decision_function(x[300:]))
    np.testing.assert_array_equal(back.predict(x[300:]), clf.predict(x[300:]))
    assert back.get_params()["sparsity"] == 0.4 and back.library_.names == lib.names
    assert list(back.classes_) == [10, 11, 12] and back.coef_.dtype == np.float32
    assert back.explain(x[300:301])[0].to_dict() == clf.explain(x[300:301])[0].to_dict()
    with np.load(path, allow_pickle=False) as z:  # no pickles inside
        assert all(z[k].dtype != object for k in z.files)


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "lib.npz"
    make_data()[2].save(p)
    with pytest.raises(ValueError, match="not an iis InterpretablePredictor"):
        iis.InterpretablePredictor.load(p)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="corrupt"):
        iis.InterpretablePredictor.load(junk)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs(fitted):
    x, y, lib = make_data()
    with pytest.raises(NotFittedError):
        iis.InterpretablePredictor(lib).predict(x)
    with pytest.raises(ValueError):  # NotFittedError is a ValueError, as scikit-learn's
        iis.InterpretablePredictor(lib).explain(x)
    with pytest.raises(ValueError, match="sparsity"):
        iis.InterpretablePredictor(lib, sparsity=1.0).fit(x, y)
    with pytest.raises(ValueError, match="d=12"):
        iis.InterpretablePredictor(lib).fit(x[:, :5], y)
    with pytest.raises(ValueError, match="at least 2"):
        iis.InterpretablePredictor(lib).fit(x, np.zeros(len(x)))
    with pytest.raises(ValueError, match="entries"):
        iis.InterpretablePredictor(lib).fit(x, y[:10])
    with pytest.raises(ValueError, match="normalize"):
        iis.InterpretablePredictor(lib, normalize="l2").fit(x, y)
    with pytest.raises(ValueError, match="needs a concept library"):
        iis.InterpretablePredictor().fit(x, y)
    with pytest.raises(TypeError):
        iis.InterpretablePredictor(lib).fit(x.astype(int), y)
    clf, xf, labels = fitted
    with pytest.raises(ValueError, match="features"):
        clf.predict(xf[:, :5])
    with pytest.raises(ValueError, match="top"):
        clf.explain(xf[:2], top=0)
    with pytest.raises(ValueError, match="by"):
        clf.explain(xf[:2], by="size")
    with pytest.raises(ValueError, match="sample_weight"):
        clf.score(xf[:5], labels[:5], sample_weight=[-1, 1, 1, 1, 1])


def test_inputs_not_modified():
    x, y, lib = make_data(dtype=np.float32)
    xc, yc, vc = x.copy(), y.copy(), lib.vectors.copy()
    clf = iis.InterpretablePredictor(lib, sparsity=0.5, normalize="standardize").fit(x, y)
    clf.predict_proba(x)
    clf.explain(x[:3])
    np.testing.assert_array_equal(x, xc)
    np.testing.assert_array_equal(y, yc)
    np.testing.assert_array_equal(lib.vectors, vc)


def test_not_converged_warns():
    x, y, lib = make_data()
    with pytest.warns(iis.ConvergenceWarning):
        iis.InterpretablePredictor(lib, max_iter=1, tol=1e-12).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iis.InterpretablePredictor(lib).fit(x, y)


# ----------------------------------------------------------------------------- CLI
def test_cli_explain(fitted, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from iis.cli import main

    clf, x, labels = fitted
    model = tmp_path / "predictor.npz"
    clf.save(model)
    feats = tmp_path / "x.npz"
    np.savez(feats, features=x[:6], labels=labels[:6])
    plot = tmp_path / "explain.png"
    out_json = tmp_path / "explain.json"
    rc = main(["explain", "--model", str(model), "--features", str(feats), "--top", "3",
               "--rows", "1:3", "--plot", str(plot), "--json", str(out_json), "--global"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "sample 1: predicted" in out and "sample 2: predicted" in out and "sample 0:" not in out
    assert "class 'cat':" in out
    data = json.loads(out_json.read_text())
    assert [d["sample"] for d in data] == [1, 2] and len(data[0]["concepts"]) == 3
    exp = clf.explain(x[1:2], top=3)[0]
    assert data[0]["concepts"][0]["name"] == exp.concepts[0]
    assert (tmp_path / "explain_1.png").stat().st_size > 1000
    assert (tmp_path / "explain_2.png").exists()
    # a plain .npy and a comma list of rows
    np.save(tmp_path / "x.npy", x[:4])
    assert main(["explain", "--model", str(model), "--features", str(tmp_path / "x.npy"),
                 "--rows", "0,3", "--top", "2"]) == 0
    assert "sample 3:" in capsys.readouterr().out


def test_cli_explain_errors(fitted, tmp_path, capsys):
    from iis.cli import main

    clf, x, labels = fitted
    model = tmp_path / "predictor.npz"
    clf.save(model)
    np.savez(tmp_path / "two.npz", a=x[:3], b=x[:3])
    assert main(["explain", "--model", str(model), "--features", str(tmp_path / "two.npz")]) == 2
    assert "--key" in capsys.readouterr().err
    assert main(["explain", "--model", str(model), "--features", str(tmp_path / "two.npz"),
                 "--key", "a", "--rows", "7"]) == 2
    assert "outside" in capsys.readouterr().err
    assert main(["explain", "--model", str(model), "--features", str(tmp_path / "none.npz")]) == 2
    assert main(["explain", "--model", str(model), "--features", str(tmp_path / "two.npz"),
                 "--key", "a", "--top", "0"]) == 2
