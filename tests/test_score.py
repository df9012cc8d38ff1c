"""iis.score end to end: against an independent NumPy/SciPy implementation of
docs/method.md (iis/_reference.py) and against scikit-learn, on real data (digits)."""
import json

import numpy as np
import pytest

import iis
from iis import _reference as ref
from iis.demo import load_digits_split, quadrant_elements

GRID = (0.0, 0.3, 0.7, 0.9, 0.98)
_REF_CACHE = {}


@pytest.fixture(scope="module")
def digits():
    xtr, ytr, xev, yev = load_digits_split(0)
    flat = lambda a: a.reshape(len(a), -1).astype(np.float64)  # noqa: E731
    el = flat(quadrant_elements(xtr))
    el_lab = np.repeat(ytr, 4)
    keep = np.linalg.norm(el, axis=1) > 0
    lib = iis.ConceptLibrary.prototype(el[keep], el_lab[keep], n_concepts=60, seed=0)
    return flat(xtr), ytr, flat(xev), yev, lib


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("normalize,mask,keep", [("layernorm", "hard", "default"),
                                                 ("standardize", "soft", "published"),
                                                 ("none", "hard", "published")])
def test_score_matches_independent_reference(digits, dtype, normalize, mask, keep):
    xtr, ytr, xev, yev, lib = digits
    l2 = 1e-2 if normalize == "none" else 1e-3  # raw activations are badly scaled: keep the test quick
    res = iis.score(xtr.astype(dtype), ytr, xev.astype(dtype), yev, lib, sparsities=GRID,
                    normalize=normalize, mask=mask, keep=keep, l2=l2, tol=1e-5)
    key = (normalize, mask, keep)
    if key not in _REF_CACHE:
        _REF_CACHE[key] = ref.score(xtr, ytr, xev, yev, lib.vectors, GRID, normalize, mask == "soft",
                                    keep == "published", l2=l2)
    exp = _REF_CACHE[key]
    assert abs(res.probe_accuracy - exp["probe_accuracy"]) <= 2 / len(yev)
    np.testing.assert_allclose(res.arr, exp["arr"], atol=0.01)
    assert res.iis == pytest.approx(exp["iis"], abs=0.005)
    assert res.kept.tolist() == [ref.keep_count(60, s, keep == "published") for s in GRID]


def test_score_matches_sklearn_logistic_regression(digits):
    from sklearn.linear_model import LogisticRegression

    xtr, ytr, xev, yev, lib = digits
    l2 = 1e-3
    res = iis.score(xtr, ytr, xev, yev, lib, sparsities=GRID, l2=l2, tol=1e-6)
    atr, aev = ref.project(xtr, lib.vectors), ref.project(xev, lib.vectors)
    for s, acc in zip(GRID, res.ip_accuracy):
        k = ref.keep_count(60, s)
        clf = LogisticRegression(C=1.0 / (l2 * len(ytr)), tol=1e-8, max_iter=5000)
        clf.fit(ref.mask(atr, k), ytr)
        assert abs(clf.score(ref.mask(aev, k), yev) - acc) <= 2 / len(yev), s


def test_result_object(digits, tmp_path):
    xtr, ytr, xev, yev, lib = digits
    res = iis.score(xtr, ytr, xev, yev, lib, sparsities=GRID)
    assert 0 < res.iis <= 0.98 * 1.2 and res.iis_normalized == pytest.approx(res.iis / 0.98)
    assert res.iis == pytest.approx(ref.trapezoid(GRID, res.arr))
    np.testing.assert_allclose(res.arr, res.ip_accuracy / res.probe_accuracy)
    d = json.loads(res.to_json(tmp_path / "r.json"))
    assert d["iis"] == res.iis and d["sparsities"] == list(GRID)
    assert json.loads((tmp_path / "r.json").read_text())["kept"] == res.kept.tolist()
    assert "IISResult(iis=" in repr(res) and "s=0.98" in repr(res)
    assert len(res.concept_names) == 60 and res.concept_names[0].startswith("prototype_")
    assert set(res.timings) >= {"project", "path", "probe", "total"}
    summ = res.summary()
    assert summ["iis"] == res.iis and summ["arr"] == res.arr.tolist() and json.dumps(summ)
    assert res.probe_above_chance and d["probe_above_chance"] is True and summ["probe_above_chance"]
    assert "chance" not in repr(res)
    import matplotlib

    matplotlib.use("Agg")
    ax = res.plot()
    assert len(ax.lines) == 1 and np.allclose(ax.lines[0].get_ydata(), res.arr)


def test_probe_at_chance_marks_the_result(digits, tmp_path):
    """Random labels: the probe is at chance, so the IIS (near 1 here) means nothing; the
    result says so (field, repr, JSON) and a warning is given. The digits workload itself
    is far above chance (test_result_object: not marked, no warning)."""
    from scipy.stats import binomtest

    xtr, ytr, xev, yev, lib = digits
    rng = np.random.default_rng(0)
    rtr, rev = rng.integers(0, 10, len(ytr)), rng.integers(0, 10, len(yev))
    with pytest.warns(UserWarning, match="not clearly above chance"):
        res = iis.score(xtr, rtr, xev, rev, lib, sparsities=GRID)
    assert not res.probe_above_chance and res.iis > 0.5
    assert res.chance_accuracy == np.bincount(rev).max() / len(rev)
    hits = round(res.probe_accuracy * len(rev))
    assert res.probe_p_value == pytest.approx(
        binomtest(hits, len(rev), res.chance_accuracy, alternative="greater").pvalue, rel=1e-9)
    assert res.probe_p_value >= 0.01
    assert "WARNING: the probe is not clearly above chance" in repr(res)
    d = json.loads(res.to_json())
    assert d["probe_above_chance"] is False and d["probe_p_value"] == res.probe_p_value
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        good = iis.score(xtr, ytr, xev, yev, lib, sparsities=GRID)
    assert good.probe_above_chance and good.probe_p_value < 1e-100


@pytest.mark.parametrize("hits,n,majority", [(0, 10, 5), (10, 10, 5), (7, 20, 4), (1, 1, 1), (30, 1000, 100),
                                             (131, 1000, 100)])
def test_chance_test_is_the_binomial_test(hits, n, majority):
    from scipy.stats import binomtest

    from iis._api import _chance_test

    p0, p = _chance_test(hits, n, majority)
    assert p0 == majority / n
    assert p == pytest.approx(binomtest(hits, n, p0, alternative="greater").pvalue, rel=1e-9, abs=1e-300)


def test_inputs_not_modified_and_labels_any_hashable(digits):
    xtr, ytr, xev, yev, lib = digits
    names = np.array([f"class_{c}" for c in range(10)])  # sorts like the integers
    copies = [a.copy() for a in (xtr, xev, lib.vectors)]
    r1 = iis.score(xtr, names[ytr], xev, names[yev].tolist(), lib, sparsities=GRID)
    r2 = iis.score(xtr, ytr, xev, yev, lib, sparsities=GRID)
    for a, c in zip((xtr, xev, lib.vectors), copies):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(r1.ip_accuracy, r2.ip_accuracy)


def test_threads_give_identical_results(digits):
    xtr, ytr, xev, yev, lib = digits
    a = iis.score(xtr.astype(np.float32), ytr, xev.astype(np.float32), yev, lib, n_threads=1)
    b = iis.score(xtr.astype(np.float32), ytr, xev.astype(np.float32), yev, lib, n_threads=2)
    np.testing.assert_array_equal(a.ip_accuracy, b.ip_accuracy)
    assert a.iis == b.iis and a.probe_accuracy == b.probe_accuracy


def test_torch_tensor_input_zero_copy(digits):
    torch = pytest.importorskip("torch")
    from iis._validation import as_float_matrix

    xtr, ytr, xev, yev, lib = digits
    t = torch.from_numpy(xtr.astype(np.float32))
    arr = as_float_matrix(t, "x")
    assert np.shares_memory(arr, t.numpy())
    r_t = iis.score(t, torch.from_numpy(ytr), torch.from_numpy(xev.astype(np.float32)), yev, lib, sparsities=GRID)
    r_n = iis.score(xtr.astype(np.float32), ytr, xev.astype(np.float32), yev, lib, sparsities=GRID)
    assert r_t.iis == r_n.iis


def test_positive_correlation_on_demo_representations():
    """The paper's headline, reproduced by the demo: IIS rises with classifiability."""
    out = iis.demo.run(out_dir=None, stages=(0, 3, 40), n_concepts=100, verbose=False)
    assert out["spearman_accuracy_iis"] > 0
    accs = [r["probe_accuracy"] for r in out["rows"]]
    assert max(accs) - min(accs) > 0.05


def test_concept_library_builders_and_io(tmp_path):
    rng = np.random.default_rng(0)
    el = rng.normal(size=(500, 8))
    lab = np.repeat(np.arange(10), 50)
    lib = iis.ConceptLibrary.prototype(el, lab, n_concepts=20, seed=3)
    src = np.asarray(lib.meta["element_index"])
    # stratified: 20 prototypes over 10 classes -> 2 per class
    assert np.bincount(lab[src], minlength=10).tolist() == [2] * 10
    np.testing.assert_array_equal(lib.vectors, el[src])
    assert iis.ConceptLibrary.prototype(el, lab, 20, seed=3).meta == lib.meta
    assert iis.ConceptLibrary.prototype(el, lab, 20, seed=4).meta != lib.meta
    lib.save(tmp_path / "lib.npz")
    back = iis.ConceptLibrary.load(tmp_path / "lib.npz")
    np.testing.assert_array_equal(back.vectors, lib.vectors)
    assert back.names == lib.names and back.kind == "prototype"
    cl = iis.ConceptLibrary.cluster(el, n_concepts=12, seed=0, max_elements=300, element_labels=lab)
    np.testing.assert_allclose(np.linalg.norm(cl.vectors, axis=1), 1.0, rtol=1e-6)
    assert sum(cl.meta["sizes"]) == 300 and cl.n_concepts == 12
    # the order of prototype's arguments: (elements, element_labels, n_concepts, seed)
    cl2 = iis.ConceptLibrary.cluster(el, lab, 12, 0, max_elements=300)
    np.testing.assert_array_equal(cl.vectors, cl2.vectors)
    with pytest.raises(TypeError, match="pass n_concepts by keyword"):
        iis.ConceptLibrary.cluster(el, 12)  # the order before issue 17
    with pytest.raises(ValueError, match="499 entries for 500"):
        iis.ConceptLibrary.cluster(el, lab[:-1], 12)  # checked also when all elements are used
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="corrupt|truncated|not"):
        iis.ConceptLibrary.load(tmp_path / "bad.npz")


def test_probe_warm_start_same_probe_and_capped(digits, monkeypatch):
    """The probe starts from the first IP's train logits: the same probe as a cold fit
    (the optimum is unique; accuracy within a prediction). Where n_train x K would cost
    more than the cap and a quarter of the features, the probe starts from zero: the
    iterations of a cold probe fitted directly. (The start saves 60 -> 42 iterations on
    W1, benchmarks/; on this digits setting it costs 77 against 75.)"""
    from iis import _api, _core

    xtr, ytr, xev, yev, lib = digits
    ytr32 = ytr.astype(np.int32)

    def cold_probe(x):
        x = np.ascontiguousarray(x)
        mu, sd = _core.colstats(x, n_threads=2)
        w, b, it, conv, *_ = _core.logreg_fit(x, y=ytr32, n_classes=10, l2=1e-3, tol=1e-6, max_iter=1000, w0=np.zeros((x.shape[1], 10)), b0=np.zeros(10), mu=mu, sigma=sd, n_threads=2)
        xe = (np.ascontiguousarray(xev[:, ::xtr.shape[1] // x.shape[1]]) - mu) / sd
        return it, np.mean(np.argmax(xe @ w + b, 1) == yev)

    warm = iis.score(xtr, ytr, xev, yev, lib, sparsities=GRID, l2=1e-3, tol=1e-6)
    it_cold, acc_cold = cold_probe(xtr)
    assert warm.probe_converged and warm.probe_n_iter != it_cold  # it started elsewhere
    assert abs(warm.probe_accuracy - acc_cold) <= 1 / len(yev)
    # d = 32: n x K (80 bytes a row) is over a quarter of the features (64 bytes a row)
    monkeypatch.setattr(_api, "_WARM_START_MAX_BYTES", 0)
    x32, e32 = np.ascontiguousarray(xtr[:, ::2]), np.ascontiguousarray(xev[:, ::2])
    sub = iis.ConceptLibrary.prototype(x32, ytr, n_concepts=20, seed=0)
    capped = iis.score(x32, ytr, e32, yev, sub, sparsities=GRID, l2=1e-3, tol=1e-6)
    assert capped.probe_n_iter == cold_probe(x32)[0]


def test_stop_reasons_and_the_convergence_warning(digits):
    """converged is True exactly for the fits whose max |grad| <= tol; a fit that stopped
    for another reason says which, and the warning names that reason (suggesting
    max_iter only when the cap stopped it)."""
    import warnings

    xtr, ytr, xev, yev, lib = digits
    with pytest.warns(iis.ConvergenceWarning) as rec:
        capped = iis.score(xtr, ytr, xev, yev, lib, sparsities=GRID, max_iter=1, tol=1e-6)
    assert capped.stop_reason == ["max_iter"] * len(GRID) and capped.probe_stop_reason == "max_iter"
    assert not capped.converged.any() and not capped.probe_converged
    text = " ".join(str(w.message) for w in rec)
    assert "(max_iter)" in text and "raise max_iter" in text
    x32, e32 = xtr.astype(np.float32), xev.astype(np.float32)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        floor = iis.score(x32, ytr, e32, yev, lib, sparsities=GRID, tol=1e-12)  # beyond float32
    assert set(floor.stop_reason) <= {"relative_decrease", "line_search"}
    assert floor.probe_stop_reason in ("relative_decrease", "line_search")
    msgs = [str(w.message) for w in rec if issubclass(w.category, iis.ConvergenceWarning)]
    assert msgs and all("raise max_iter" not in m and "float64" in m for m in msgs)
    ok = iis.score(xtr, ytr, xev, yev, lib, sparsities=GRID, tol=1e-4)
    assert ok.stop_reason == ["converged"] * len(GRID) and ok.converged.all()
    clf = iis.InterpretablePredictor(lib, sparsity=0.7, max_iter=1, tol=1e-12)
    with pytest.warns(iis.ConvergenceWarning, match=r"\(max_iter\)"):
        clf.fit(xtr, ytr)
    assert clf.stop_reason_ == "max_iter" and not clf.converged_
    assert iis.InterpretablePredictor(lib, sparsity=0.7, tol=1e-4).fit(xtr, ytr).stop_reason_ == "converged"
