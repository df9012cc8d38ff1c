"""Labels (issue 17, Trust): eval labels are matched to the train classes by value,
never cast to the train dtype; continuous (fractional float) targets are refused;
eval classes unseen in train count as errors with a warning, the same way in
``iis.score``, ``InterpretablePredictor.score`` and the CLI; a probe that is not
clearly above chance marks the result."""
import json
import warnings

import numpy as np
import pytest

import iis
from iis._validation import encode_labels, match_labels

K, D, M = 3, 6, 7
_RNG = np.random.default_rng(17)
_MEANS = _RNG.normal(size=(K, D)) * 2.0
YTR = np.tile(np.arange(K), 40)                   # 120 rows
XTR = _MEANS[YTR] + _RNG.normal(size=(120, D))
YEV = np.tile(np.arange(K), 20)                   # 60 rows
XEV = _MEANS[YEV] + _RNG.normal(size=(60, D))
P = _RNG.normal(size=(M, D))
GRID = (0.0, 0.5)


def _score(ytr=YTR, yev=YEV, xtr=XTR, xev=XEV, **kw):
    return iis.score(xtr, ytr, xev, yev, P, sparsities=GRID, n_threads=1, **kw)


def _codes(train, ev):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        classes, _, (codes,) = encode_labels(train, [ev], ["eval_labels"])
    return classes, codes


# ----------------------------------------------------------------------------- matching by value
@pytest.mark.parametrize("case,train,ev,expect", [
    # a wider string is not truncated onto a class (was: "cats" -> "cat", "doge" -> "dog")
    ("str-wider", np.array(["cat", "dog"]), np.array(["cats", "doge", "dog"]), [-1, -1, 1]),
    ("str-narrower", np.array(["cats", "dogs"]), np.array(["cat", "dogs"]), [-1, 1]),
    ("bytes-wider", np.array([b"a", b"b"]), np.array([b"ab", b"b"]), [-1, 1]),
    # an integer beyond the train dtype does not wrap onto a class (was: 2**32 + 1 -> 1)
    ("int32-vs-int64-overflow", np.array([0, 1], np.int32), np.array([2**32 + 1, 1], np.int64), [-1, 1]),
    ("int8-vs-int64", np.array([0, 1], np.int8), np.array([256, 257, 0]), [-1, -1, 0]),
    ("uint8-vs-negative", np.array([0, 255], np.uint8), np.array([-1, 255], np.int64), [-1, 1]),
    ("int64-vs-uint64-max", np.array([0, 1], np.int64), np.array([2**64 - 1, 1], np.uint64), [-1, 1]),
    ("uint64-big", np.array([0, 2**63 + 1], np.uint64), np.array([2**63 + 1, 2**63, 0], np.uint64), [1, -1, 0]),
    ("python-big-ints", [0, 10**30], [10**30 + 1, 10**30, 0], [-1, 1, 0]),
    ("float-int-exact", np.array([0.0, 2.0**53]), np.array([2**53 + 1, 2**53, 0]), [-1, 1, 0]),
    ("int-and-integral-float", np.array([0, 1, 2]), np.array([2.0, 0.0]), [2, 0]),
    ("float32-vs-float64", np.array([0, 3], np.float32), np.array([3.0, 0.0]), [1, 0]),
    ("bool-train-int-eval", np.array([False, True]), np.array([1, 0, 2]), [1, 0, -1]),
    ("object-strings-vs-str", np.array(["a", "b"], dtype=object), np.array(["b", "bb"]), [1, -1]),
    ("str-vs-bytes", np.array(["a", "b"]), np.array([b"a", "b"], dtype=object), [-1, 1]),
    ("str-train-some-int-eval", np.array(["0", "1"]), np.array(["1", 1], dtype=object)[:1], [1]),
    ("datetime-units", np.array(["2020-01-01", "2020-01-02"], "datetime64[D]"),
     np.array(["2020-01-02T00:00:00", "2020-01-02T00:00:01"], "datetime64[s]"), [1, -1]),
])
def test_eval_labels_matched_by_value(case, train, ev, expect):
    classes, codes = _codes(train, ev)
    assert codes.dtype == np.int32
    assert codes.tolist() == expect
    assert all(classes[c] == v for c, v in zip(codes, np.asarray(ev)) if c >= 0)


def test_torch_labels():
    torch = pytest.importorskip("torch")
    classes, codes = _codes(torch.tensor([0, 1, 2, 1]), torch.tensor([2, 0, 5]))
    assert classes.tolist() == [0, 1, 2] and codes.tolist() == [2, 0, -1]
    classes, codes = _codes(torch.tensor([True, False]), np.array([True]))
    assert codes.tolist() == [1]
    with pytest.raises(ValueError, match="continuous"):
        encode_labels(torch.tensor([0.0, 0.5]))
    res = _score(ytr=torch.from_numpy(YTR), yev=torch.from_numpy(YEV).to(torch.int32))
    ref = _score()
    assert res.iis == ref.iis and res.probe_accuracy == ref.probe_accuracy


# ----------------------------------------------------------------------------- refused labels
@pytest.mark.parametrize("case,labels,exc,match", [
    ("fractional-float", YTR + 0.5, ValueError, "continuous"),
    ("one-fractional", np.r_[1.25, YTR[1:]].astype(float), ValueError, r"continuous.*1\.25"),
    ("float32-fractional", (YTR + 0.5).astype(np.float32), ValueError, "continuous"),
    ("object-fractional", np.array([0, 1, 0.5] * 40, dtype=object), ValueError, "continuous"),
    ("list-fractional", [0, 1, 2.5] * 40, ValueError, "continuous"),
    ("list-mixed-int-str", ["a", 1, "b"] * 40, TypeError, "mix strings and numbers"),
    ("object-mixed-int-str", np.array(["a", 1, "b"] * 40, dtype=object), TypeError, "mix strings and numbers"),
    ("list-ragged", [[0], [1, 2]] * 60, TypeError, "could not be converted"),
])
@pytest.mark.parametrize("where", ["train", "eval"])
def test_bad_labels_refused_in_either_split(case, labels, exc, match, where):
    kw = dict(ytr=labels) if where == "train" else dict(yev=labels[:60])
    with pytest.raises(exc, match=match):
        _score(**kw)
    with pytest.raises(exc, match=match):
        iis.InterpretablePredictor(P, sparsity=0.5).fit(XTR, labels) if where == "train" else \
            iis.InterpretablePredictor(P, sparsity=0.5).fit(XTR, YTR).score(XEV, labels[:60])


def test_integral_floats_are_classes():
    ref = _score()
    res = _score(ytr=YTR.astype(float), yev=YEV.astype(np.float32))
    assert (res.iis, res.probe_accuracy) == (ref.iis, ref.probe_accuracy)
    clf = iis.InterpretablePredictor(P, sparsity=0.5).fit(XTR, YTR * 2.0)
    assert clf.classes_.dtype == np.float64 and clf.classes_.tolist() == [0.0, 2.0, 4.0]
    assert clf.score(XEV, YEV * 2) == iis.InterpretablePredictor(P, sparsity=0.5).fit(XTR, YTR).score(XEV, YEV)


def test_bool_labels():
    ref = _score(ytr=YTR > 0, yev=YEV > 0)
    res = _score(ytr=(YTR > 0).astype(int), yev=YEV > 0)
    assert (res.iis, res.probe_accuracy) == (ref.iis, ref.probe_accuracy)


# ----------------------------------------------------------------------------- unseen eval classes
def _with_unseen(y, value, n):
    y = np.asarray(y).astype(object if isinstance(value, str) else np.asarray(y).dtype)
    y = y.copy()
    y[:n] = value
    return y


def test_unseen_eval_classes_count_as_errors_in_score():
    """Rows of a class absent from train can never be predicted: both accuracies count them
    as errors, so ARR (a ratio of hit counts) and the IIS equal those without the rows."""
    n_bad = 6
    xev = np.vstack([XEV[:n_bad], XEV])
    yev = np.r_[np.full(n_bad, 7), YEV]
    ref = _score()
    with pytest.warns(UserWarning, match=r"6 of 66 eval_labels \(classes \[7\]\).*count as errors"):
        res = _score(xev=xev, yev=yev)
    assert res.n_eval == 66
    np.testing.assert_array_equal(res.arr, ref.arr)
    assert res.iis == ref.iis
    assert res.probe_accuracy == pytest.approx(ref.probe_accuracy * 60 / 66, abs=1e-12)
    np.testing.assert_allclose(res.ip_accuracy, ref.ip_accuracy * 60 / 66, atol=1e-12)


def test_unseen_eval_classes_same_rule_in_predictor():
    clf = iis.InterpretablePredictor(P, sparsity=0.5).fit(XTR, YTR)
    yev = _with_unseen(YEV, 7, 6)
    with pytest.warns(UserWarning, match=r"6 of 60 y \(classes \[7\]\).*count as errors"):
        acc = clf.score(XEV, yev)
    assert acc == pytest.approx(np.mean(clf.predict(XEV) == yev))
    with pytest.raises(ValueError, match="none of"):
        clf.score(XEV, YEV + 10)


def test_labels_that_do_not_match_at_all_are_refused():
    """The issue's case: train ["cat", "dog"], eval ["cats", "doge"] (was scored as cat/dog)."""
    ytr = np.array(["cat", "dog"])[YTR % 2]
    yev = np.array(["cats", "doge"])[YEV % 2]
    with pytest.raises(ValueError, match=r"none of the eval_labels.*train_labels"):
        _score(ytr=ytr, yev=yev)
    with pytest.raises(ValueError, match="none of"):
        _score(yev=YEV.astype(np.int64) + 2**32)   # was wrapped onto 0, 1, 2


def test_unseen_eval_classes_same_rule_in_cli(tmp_path):
    from iis.cli import main

    np.savez(tmp_path / "tr.npz", features=XTR, labels=YTR)
    np.savez(tmp_path / "ev.npz", features=XEV, labels=_with_unseen(YEV, 7, 6))
    np.savez(tmp_path / "bad.npz", features=XEV, labels=YEV + 10)
    argv = ["score", "--train", str(tmp_path / "tr.npz"), "--library", "prototype:5", "--quiet",
            "--sparsities", "0,0.5", "--n-threads", "1", "--out", str(tmp_path / "r.json")]
    with pytest.warns(UserWarning, match="count as errors"):
        assert main(argv + ["--eval", str(tmp_path / "ev.npz")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["n_eval"] == 60
    assert main(argv + ["--eval", str(tmp_path / "bad.npz")]) == 2


def test_match_labels_does_not_modify_input():
    y = np.array(["b", "a", "z"])
    keep = y.copy()
    with pytest.warns(UserWarning):
        assert match_labels(np.array(["a", "b"]), y, "y").tolist() == [1, 0, -1]
    np.testing.assert_array_equal(y, keep)


def test_dataset_splitters_check_labels_the_same_way():
    from iis.datasets import select_per_class, train_eval_split

    with pytest.raises(ValueError, match="continuous"):
        train_eval_split(YTR + 0.5)
    with pytest.raises(TypeError, match="mix strings and numbers"):
        select_per_class(["a", 1, "b", 2], 1)
    assert np.array_equal(select_per_class(YTR.astype(float), 40), np.arange(120))
