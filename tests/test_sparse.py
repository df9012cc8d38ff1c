"""iis.sparse_path: the multinomial elastic-net path of csrc/sparse.c (issue 21).

The solver stops when the largest KKT violation over all weights and intercepts is <= tol;
the tests recompute that violation in float64 NumPy from the returned (W, b), so their
bound is tol plus the rounding of two different summation orders of the same gradient
(1e-12 here, where gradients are O(1))."""
import json
import warnings

import numpy as np
import pytest

import iis
from iis._api import ConvergenceWarning

ROUND = 1e-12


def problem(n=240, m=14, k=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, m))
    x[:, 1] += 0.8 * x[:, 0]  # correlated concepts, as concept activations are
    logits = x[:, :k] * 1.5 + rng.normal(size=(n, k))
    return x.astype(dtype), np.argmax(logits, axis=1)


def ce_grad(x, y, w, b):
    """mean CE and its gradient in float64 (the reference)."""
    z = x @ w + b
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(y)
    ce = float(np.mean(-np.log(p[np.arange(n), y])))
    p[np.arange(n), y] -= 1
    return ce, x.T @ p / n, p.sum(axis=0) / n


def kkt(x, y, w, b, lam, alpha, grouped):
    """largest KKT violation of (w, b) (the solver's stopping rule, written independently)"""
    _, g, gb = ce_grad(x.astype(np.float64), y, w, b)
    g = g + lam * (1 - alpha) * w
    l1 = lam * alpha
    if grouped:
        wn = np.linalg.norm(w, axis=1)
        nz = wn > 0
        r = np.zeros(len(wn))
        r[nz] = np.linalg.norm(g[nz] + l1 * w[nz] / wn[nz, None], axis=1)
        r[~nz] = np.maximum(np.linalg.norm(g[~nz], axis=1) - l1, 0)
    else:
        r = np.where(w != 0, np.abs(g + l1 * np.sign(w)), np.maximum(np.abs(g) - l1, 0))
    return max(float(r.max()), float(np.abs(gb).max()))


def penalised(x, y, w, b, lam, alpha):
    ce, _, _ = ce_grad(x, y, w, b)
    return ce + lam * (alpha * np.abs(w).sum() + 0.5 * (1 - alpha) * (w * w).sum())


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kkt_holds_along_the_path(grouped, dtype):
    x, y = problem(dtype=dtype)
    tol = 1e-7
    p = iis.sparse_path(x, y, n_lambdas=12, tol=tol, grouped=grouped, alpha=0.9)
    assert p.converged.all()
    for i in range(len(p)):
        v = kkt(x, y, p.coef(i), p.intercepts[i], p.lambdas[i], 0.9, grouped)
        assert v <= tol + ROUND, (i, v)
        assert p.kkt[i] <= tol
    # W = 0 exactly at lambda_max, nonzeros appear below it and the path ends much denser
    assert p.nonzeros[0] == 0 and p.nonzeros[1] > 0
    assert p.nonzeros[-1] > p.nonzeros[1]
    assert p.concepts_used[-1] == x.shape[1]


def test_lambda_max_is_the_first_zero_solution():
    x, y = problem()
    p = iis.sparse_path(x, y, n_lambdas=3, tol=1e-9)
    below = iis.sparse_path(x, y, lambdas=[p.lambda_max * 0.999], tol=1e-9)
    assert below.nonzeros[0] > 0
    # at lambda_max the intercepts are the log class frequencies (up to a constant)
    b = p.intercepts[0]
    logf = np.log(np.bincount(y) / len(y))
    np.testing.assert_allclose(b - b.mean(), logf - logf.mean(), atol=1e-9)


def test_grouped_drops_whole_concepts():
    x, y = problem(k=5)
    p = iis.sparse_path(x, y, n_lambdas=15, grouped=True, tol=1e-7)
    for i in range(len(p)):
        per_row = (p.coef(i) != 0).sum(axis=1)
        assert set(per_row.tolist()) <= {0, 5}
    assert 0 < p.concepts_used[3] < x.shape[1]


@pytest.mark.parametrize("at", [2, 6, 11])
def test_same_objective_as_sklearn_saga(at):
    """sklearn's LogisticRegression(saga, elastic net) minimises
    C sum CE + l1_ratio ||W||_1 + (1 - l1_ratio)/2 ||W||^2, i.e. our objective times C n with
    C = 1 / (n lambda). At our point, F - F* <= ||r|| ||W - W*|| for the minimal subgradient r
    (||r|| <= sqrt(number of parameters) tol); with tol = 1e-10 that is far below 1e-8."""
    from sklearn.linear_model import LogisticRegression

    x, y = problem(n=150, m=6, k=3, seed=3)
    alpha = 0.9
    p = iis.sparse_path(x, y, n_lambdas=12, alpha=alpha, tol=1e-10, max_iter=100_000)
    lam = p.lambdas[at]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(solver="saga", l1_ratio=alpha, C=1 / (len(y) * lam), tol=1e-12,
                                 max_iter=200_000).fit(x, y)
    ours = penalised(x, y, p.coef(at), p.intercepts[at], lam, alpha)
    theirs = penalised(x, y, clf.coef_.T, clf.intercept_, lam, alpha)
    assert abs(ours - p.objective[at]) <= 1e-12
    assert ours <= theirs + 1e-8
    assert theirs - ours <= 1e-6  # saga converged to the same optimum
    np.testing.assert_array_equal(p.coef(at) != 0, np.abs(clf.coef_.T) > 1e-6)


def test_same_bits_for_any_thread_count_and_input_not_modified():
    x, y = problem(n=3000, m=40, k=10, seed=1)
    x0 = x.copy()
    p1 = iis.sparse_path(x, y, n_lambdas=6, tol=1e-6, n_threads=1)
    p2 = iis.sparse_path(x, y, n_lambdas=6, tol=1e-6, n_threads=2)
    np.testing.assert_array_equal(x, x0)
    for i in range(6):
        np.testing.assert_array_equal(p1.coef(i), p2.coef(i))
        np.testing.assert_array_equal(p1.intercepts[i], p2.intercepts[i])


def test_result_object():
    x, y = problem()
    labels = np.array(["cat", "dog", "eel", "fox"])[y]
    p = iis.sparse_path(x[:200], labels[:200], n_lambdas=5, eval=(x[200:], labels[200:]), tol=1e-6)
    d = json.loads(json.dumps(p.to_dict()))
    assert d["classes"] == ["cat", "dog", "eel", "fox"] and len(d["path"]) == 5
    pt = d["path"][3]
    w = np.zeros((x.shape[1], 4))
    w[pt["weights"]["concept"], pt["weights"]["class"]] = pt["weights"]["value"]
    np.testing.assert_array_equal(w, p.coef(3))
    assert pt["nonzeros"] == int((w != 0).sum()) and sum(pt["nonzeros_per_class"]) == pt["nonzeros"]
    acc = np.mean(p.predict(x[200:], 3) == labels[200:])
    assert acc == p.eval_accuracy[3]
    text = repr(p)
    assert "eval acc" in text and len(text.splitlines()) == 1 + 1 + 5
    import matplotlib

    matplotlib.use("Agg")
    ax = p.plot()
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), p.nonzeros)


def test_not_converged_warns():
    x, y = problem()
    with pytest.warns(ConvergenceWarning, match="did not reach tol"):
        p = iis.sparse_path(x, y, n_lambdas=8, tol=1e-12, max_iter=3)
    assert not p.converged.all()


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(alpha=0.0), ValueError, "alpha"),
    (dict(alpha=1.5), ValueError, "alpha"),
    (dict(tol=0.0), ValueError, "tol"),
    (dict(n_lambdas=0), ValueError, "n_lambdas"),
    (dict(lambda_min_ratio=2.0), ValueError, "lambda_min_ratio"),
    (dict(lambdas=[0.1, 0.2]), ValueError, "non-increasing"),
    (dict(eval=np.zeros((3, 14))), TypeError, "eval"),
    (dict(eval=(np.zeros((3, 5)), [0, 1, 2])), ValueError, "eval activations"),
])
def test_bad_input(kwargs, exc, match):
    x, y = problem()
    with pytest.raises(exc, match=match):
        iis.sparse_path(x, y, **kwargs)


def test_bad_data():
    x, y = problem()
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        iis.sparse_path(bad, y)
    with pytest.raises(ValueError, match="labels has 239 entries"):
        iis.sparse_path(x, y[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        iis.sparse_path(x, np.zeros(len(y), dtype=int))


# ------------------------------------------------------ InterpretablePredictor(penalty="elasticnet")
def concept_data(n=600, d=12, K=4, M=20, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(K, d)) * 1.2
    y = rng.integers(0, K, n)
    x = means[y] + rng.normal(size=(n, d))
    lib = iis.ConceptLibrary(rng.normal(size=(M, d)), [f"c{i}" for i in range(M)])
    return x, y, lib


@pytest.mark.parametrize("budget", [2, 5, None])
def test_predictor_elasticnet_budget_and_optimality(budget):
    x, y, lib = concept_data()
    clf = iis.InterpretablePredictor(lib, sparsity=0.5, penalty="elasticnet", nonzeros_per_class=budget,
                                     tol=1e-7).fit(x, y)
    nz = (clf.coef_ != 0).sum(axis=1)
    if budget is not None:
        assert nz.max() <= budget
    assert nz.sum() > 0 and clf.lambda_ > 0
    # the head is the elastic-net solution at lambda_ on all train rows' masked activations
    a = clf._masked(x, dense=True).astype(np.float64)
    v = kkt(a, y, clf.coef_.T.astype(np.float64), clf.intercept_, clf.lambda_, 0.99, False)
    assert v <= 1e-7 + ROUND


def test_predictor_elasticnet_selects_on_train_only():
    """fit sees only train rows: the same fit whatever evaluation data exists, and the chosen
    point is the best on the stratified 20% hold-out among the feasible ones."""
    x, y, lib = concept_data(seed=2)
    a = iis.InterpretablePredictor(lib, penalty="elasticnet", nonzeros_per_class=4, tol=1e-6).fit(x, y)
    b = iis.InterpretablePredictor(lib, penalty="elasticnet", nonzeros_per_class=4, tol=1e-6).fit(x, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    dense = a._masked(x, dense=True)
    rng = np.random.default_rng(0)
    hold = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:int(0.2 * np.sum(y == c))] for c in range(4)])
    fit = np.setdiff1d(np.arange(len(y)), hold)
    p = iis.sparse_path(dense[fit], y[fit], eval=(dense[hold], y[hold]), tol=1e-6)
    ok = p.nonzeros_per_class.max(axis=1) <= 4
    assert a.lambda_ <= p.lambdas[np.flatnonzero(ok)[np.argmax(p.eval_accuracy[ok])]] * (1 + 1e-12)


def test_predictor_elasticnet_explanations_list_nonzero_concepts(tmp_path):
    x, y, lib = concept_data(seed=1)
    clf = iis.InterpretablePredictor(lib, penalty="elasticnet", nonzeros_per_class=3, tol=1e-6).fit(x, y)
    for e in clf.explain(x[:20], top=None):
        c = int(np.flatnonzero(clf.classes_ == e.predicted)[0])
        assert len(e.concepts) == e.n_kept <= 3
        assert set(e.concept_index.tolist()) <= set(np.flatnonzero(clf.coef_[c]).tolist())
        assert e.bias + e.contribution.sum() == pytest.approx(e.logit, abs=1e-9)
    g = clf.global_explanation(top=None)
    assert all(len(v) == (clf.coef_[i] != 0).sum() for i, v in enumerate(g.values()))
    clf.save(tmp_path / "m.npz")
    back = iis.InterpretablePredictor.load(tmp_path / "m.npz")
    assert back.penalty == "elasticnet" and back.lambda_ == clf.lambda_
    np.testing.assert_array_equal(back.predict(x), clf.predict(x))


@pytest.mark.parametrize("kwargs, match", [
    (dict(penalty="l1"), "penalty"),
    (dict(penalty="elasticnet", alpha=0), "alpha"),
    (dict(penalty="elasticnet", nonzeros_per_class=0), "nonzeros_per_class"),
])
def test_predictor_elasticnet_bad_params(kwargs, match):
    x, y, lib = concept_data()
    with pytest.raises(ValueError, match=match):
        iis.InterpretablePredictor(lib, **kwargs).fit(x, y)


def test_text_library_ends_in_a_sparse_head():
    """The Label-free CBM recipe: a text library (standardised activations, all concepts kept)
    ending in a sparse elastic-net head; iis.score on the same library is untouched."""
    from test_text import planted

    names, F, img, txt, A, Z = planted()
    lib = iis.ConceptLibrary.text(names, F, img, txt, interpretability_cutoff=0.3, seed=0)
    y = np.argmax(Z + 0.01 * np.arange(Z.shape[1]), axis=1)
    labels = np.array(["cat", "dog", "car", "tree"])[y]
    before = iis.score(F[:1000], labels[:1000], F[1000:], labels[1000:], lib, sparsities=(0.0, 0.5))
    clf = iis.InterpretablePredictor(lib, penalty="elasticnet", nonzeros_per_class=1, tol=1e-6)
    clf.fit(F[:1000], labels[:1000])
    assert clf.normalize_ == "standardize" and (clf.coef_ != 0).sum(axis=1).max() <= 1
    assert clf.score(F[1000:], labels[1000:]) > 0.5
    # each class's one concept is its own planted concept
    for c, label in enumerate(clf.classes_):
        j = np.flatnonzero(clf.coef_[c])
        if j.size:
            assert lib.names[j[0]] == f"planted_{['cat', 'dog', 'car', 'tree'].index(label)}"
    after = iis.score(F[:1000], labels[:1000], F[1000:], labels[1000:], lib, sparsities=(0.0, 0.5))
    strip = lambda r: {k: v for k, v in r.to_dict().items() if k != "timings"}  # noqa: E731
    assert strip(after) == strip(before)


def test_screening_and_kkt_check_readd_concepts():
    """The strong rule keeps row j when its gradient at the previous point reaches
    alpha (2 lambda - lambda_prev); a cold start at a small lambda with lambda_prev = lambda
    screens out concepts that the solution needs, and the KKT check must add them back."""
    from iis import _core

    x, y = problem(n=300, m=30, k=3, seed=4)
    y = y.astype(np.int32)
    b0 = np.log(np.bincount(y) / len(y))

    def cold(lam, lam_prev):
        w, b = np.zeros((30, 3)), b0.copy()
        _, g, gb = _core.enet_objective(x, y, 3, w, b)
        info = _core.enet_fit(x, y, 3, w, b, g, gb, lam=lam, lam_prev=lam_prev, alpha=0.99, grouped=False,
                              tol=1e-9, max_iter=100_000)
        return w, b, info

    _, g0, _ = _core.enet_objective(x, y, 3, np.zeros((30, 3)), b0)
    lam = 0.1 * np.abs(g0).max() / 0.99
    w1, b1, screened = cold(lam, lam)
    w2, b2, full = cold(lam, 1e3 * lam)  # threshold below 0: every concept kept
    assert full["n_screened"] == 30 and full["n_added"] == 0
    assert screened["n_screened"] < 30 and screened["n_added"] > 0
    assert kkt(x, y, w1, b1, lam, 0.99, False) <= 1e-9 + ROUND
    assert penalised(x, y, w1, b1, lam, 0.99) == pytest.approx(penalised(x, y, w2, b2, lam, 0.99), abs=1e-12)
    np.testing.assert_array_equal(w1 != 0, w2 != 0)


@pytest.mark.parametrize("grouped", [False, True])
def test_ill_conditioned_columns_reach_tol(grouped):
    """Column scales from 1e-2 to 1e2 and a nearly collinear pair (Gram condition number
    about 1e12): every point still reaches tol within the default max_iter (a first-order
    method needs far more steps here; the proximal Newton model carries the design's Gram).
    The recomputed violation's rounding grows with the column scale (1e2 ROUND)."""
    x, y = problem(n=300, m=12, k=3, seed=5)
    x[:, 2] = x[:, 3] + 1e-3 * x[:, 2]
    x = x * np.logspace(-2, 2, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        p = iis.sparse_path(x, y, n_lambdas=8, tol=1e-6, grouped=grouped)
    for i in range(len(p)):
        assert kkt(x, y, p.coef(i), p.intercepts[i], p.lambdas[i], 0.99, grouped) <= 1e-6 + 1e2 * ROUND
    assert p.nonzeros[-1] > p.nonzeros[1] > 0
