"""iis.probe and score(probe=...): the dense probe fitted once and shared by the score calls
of several libraries on one representation (issue 20, the sweep's cost)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import iis
import iis._api as api


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


def test_probe_equals_scikit_learn_and_scores_own_probe(digits):
    """Both solve the same strictly convex problem (mean CE + l2/2 ||W||^2 on features
    standardised with train statistics) to max|grad| <= tol, from different starts: their
    predictions, and scikit-learn's at its optimum, agree but for near-ties."""
    xtr, ytr, xev, yev = digits
    l2, tol = 1e-2, 1e-8
    p = iis.probe(xtr, ytr, xev, yev, l2=l2, tol=tol, n_threads=1)
    res = iis.score(xtr, ytr, xev, yev, iis.ConceptLibrary.prototype(xtr, ytr, n_concepts=30, seed=0),
                    l2=l2, tol=tol, n_threads=1)
    assert p.converged and p.stop_reason == "converged" and res.probe_converged
    sc = StandardScaler().fit(xtr)  # the same train statistics (a constant column kept as is)
    ref = LogisticRegression(C=1 / (len(ytr) * l2), tol=1e-12, max_iter=10000).fit(sc.transform(xtr), ytr)
    z = np.sort(ref.decision_function(sc.transform(xev)), axis=1)
    # strong convexity (l2) bounds |W - W*| by sqrt(#weights) tol / l2 = 2.5e-5, and a standardised
    # row's norm is below 40 here: logits within 1e-3 of each other are the only possible flips
    near_ties = int(np.sum(z[:, -1] - z[:, -2] < 2e-3))
    hits = int(np.sum(ref.predict(sc.transform(xev)) == yev))
    assert abs(p.hits - hits) <= near_ties and abs(round(res.probe_accuracy * len(yev)) - hits) <= near_ties
    assert p.accuracy == p.hits / len(yev)
    assert (p.n_train, p.n_eval, p.dim, p.dtype, p.classes) == (1200, len(yev), 64, "float64", tuple(range(10)))
    assert (p.l2, p.tol, p.max_iter) == (l2, tol, 1000)


def _fields(r):
    return {k: v for k, v in r.to_dict().items() if k != "timings"}


@pytest.mark.parametrize("unseen", [False, True])
def test_score_with_a_probe_is_score_given_that_probe_bit_for_bit(digits, monkeypatch, unseen):
    """score(probe=p) is what score computes when its own probe fit returns p's outcome,
    also where eval rows of unseen classes count as errors."""
    xtr, ytr, xev, yev = (a.astype(np.float32) if a.dtype.kind == "f" else a for a in digits)
    if unseen:
        keep = ytr != 9  # class 9 only in eval
        xtr, ytr = xtr[keep], ytr[keep]
    lib = iis.ConceptLibrary.prototype(xtr, ytr, n_concepts=20, seed=0)
    with pytest.warns(UserWarning, match="never be predicted") if unseen else _no_warning():
        p = iis.probe(xtr, ytr, xev, yev, n_threads=1)
    n_seen = int(np.isin(yev, ytr).sum())
    assert p.hits <= n_seen and p.n_eval == len(yev)
    with pytest.warns(UserWarning) if unseen else _no_warning():
        given = iis.score(xtr, ytr, xev, yev, lib, probe=p, n_threads=1)

    def fitted(*args, **kw):  # score's own probe, returning p's outcome
        return p.hits / n_seen, p.n_iter, p.converged, iis.STOP_REASONS.index(p.stop_reason)

    monkeypatch.setattr(api, "_probe", fitted)
    with pytest.warns(UserWarning) if unseen else _no_warning():
        own = iis.score(xtr, ytr, xev, yev, lib, n_threads=1)
    assert _fields(given) == _fields(own)
    assert given.probe_accuracy == p.accuracy and given.probe_n_iter == p.n_iter
    np.testing.assert_array_equal(given.arr, own.arr)


class _no_warning:
    def __enter__(self):
        import warnings

        self.w = warnings.catch_warnings()
        self.w.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc):
        self.w.__exit__(*exc)


def test_score_with_a_probe_fits_none(digits, monkeypatch):
    xtr, ytr, xev, yev = digits
    p = iis.probe(xtr, ytr, xev, yev, n_threads=1)

    def no_fit(*args, **kw):
        raise AssertionError("score fitted a probe although one was given")

    monkeypatch.setattr(api, "_probe", no_fit)
    res = iis.score(xtr, ytr, xev, yev, iis.ConceptLibrary.prototype(xtr, ytr, n_concepts=20, seed=0), probe=p,
                    n_threads=1)
    assert res.probe_accuracy == p.accuracy and res.probe_stop_reason == p.stop_reason


@pytest.mark.parametrize("field, change", [
    ("n_train", lambda d: dict(d, xtr=d["xtr"][:-1], ytr=d["ytr"][:-1])),
    ("n_eval", lambda d: dict(d, xev=d["xev"][:-1], yev=d["yev"][:-1])),
    ("classes", lambda d: dict(d, ytr=d["ytr"] + 1, yev=d["yev"] + 1)),
    ("dim", lambda d: dict(d, xtr=d["xtr"][:, :-1], xev=d["xev"][:, :-1])),
    ("dtype", lambda d: dict(d, xtr=d["xtr"].astype(np.float32), xev=d["xev"].astype(np.float32))),
    ("l2", lambda d: dict(d, l2=1e-3)),
    ("tol", lambda d: dict(d, tol=1e-4)),
    ("max_iter", lambda d: dict(d, max_iter=999)),
])
def test_a_probe_of_other_data_or_options_is_refused_naming_the_field(digits, field, change):
    xtr, ytr, xev, yev = digits
    p = iis.probe(xtr, ytr, xev, yev, n_threads=1)
    d = change({"xtr": xtr, "ytr": ytr, "xev": xev, "yev": yev, "l2": 1e-4, "tol": 1e-5, "max_iter": 1000})
    lib = np.random.default_rng(0).standard_normal((8, d["xtr"].shape[1]))
    with pytest.raises(ValueError, match=f"the probe was fitted with {field} = .* but this call has {field} = "):
        iis.score(d["xtr"], d["ytr"], d["xev"], d["yev"], lib, l2=d["l2"], tol=d["tol"], max_iter=d["max_iter"],
                  probe=p)


def test_probe_is_checked_as_score_checks(digits):
    xtr, ytr, xev, yev = digits
    with pytest.raises(TypeError, match="probe must be a ProbeResult"):
        iis.score(xtr, ytr, xev, yev, np.ones((4, 64)), probe={"accuracy": 0.9})
    with pytest.raises(ValueError, match="train_labels has 1199 entries but train_features has 1200 rows"):
        iis.probe(xtr, ytr[:-1], xev, yev)
    with pytest.raises(ValueError, match="tol must be > 0"):
        iis.probe(xtr, ytr, xev, yev, tol=0)
    bad = xev.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"eval_features contains NaN or Inf \(first in row 7\)"):
        iis.probe(xtr, ytr, bad, yev)
    bad = xtr.copy()
    bad[5, 0] = 1e300
    with pytest.raises(ValueError, match=r"train_features has entries as large as 1e\+300 \(first in row 5\)"):
        iis.probe(bad, ytr, xev, yev)
    p = iis.probe(xtr, ytr, xev, yev, n_threads=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.accuracy = 1.0
    with pytest.warns(iis.ConvergenceWarning, match="the probe stopped before"):
        q = iis.probe(xtr, ytr, xev, yev, max_iter=2, n_threads=1)
    assert not q.converged and q.stop_reason == "max_iter"


def test_probe_progress_reports_the_probe(digits):
    xtr, ytr, xev, yev = digits
    events = []
    p = iis.probe(xtr, ytr, xev, yev, n_threads=1, progress=events.append)
    assert [e.event for e in events][0] == "start" and events[-1].event == "end"
    assert {e.stage for e in events} == {"probe"} and events[-1].accuracy == p.accuracy
    assert events[-1].iteration == p.n_iter
