"""Interpretable predictions (docs/method.md section 7): ``InterpretablePredictor``.

``logits = W @ mask_s(a(x)) + b`` with ``a(x) = norm(x @ unit(P).T)``; the
explanation of a prediction is the list of kept concepts ranked by their
contribution ``W[y, m] * a_m`` to the logit of the predicted class ``y``.
Fitting, masking and prediction run in the C core (the same solver, penalty
and tolerance as :func:`iis.score`).
"""
from __future__ import annotations

import json
import numbers
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _core
from ._blas import kernels
from ._library import NORMALIZATIONS, ConceptLibrary, warn_if_layernorm_at_chance
from ._validation import (as_float_matrix, check_option, check_positive, check_threads, encode_labels,
                          match_labels, meant_float, printable, read_npz, single_blas)

_FORMAT = "iis.InterpretablePredictor/1"
# what load() reads (mean and std only for normalize="standardize")
_SAVED_ARRAYS = ("library_vectors", "library_names", "library_kind", "library_default_normalize",
                 "params", "info", "coef", "intercept", "classes")
_PARAMS = ("library", "sparsity", "normalize", "mask", "keep", "l2", "tol", "max_iter", "n_threads",
           "penalty", "alpha", "nonzeros_per_class")
_HOLDOUT = 0.2  # share of each class's train rows that picks the elastic-net point
_ORDERS = ("signed", "magnitude")


def _py(v: Any) -> Any:
    """NumPy scalars as Python scalars (readable reprs, JSON); float32 as the decimal it
    was written as (``meant_float``)."""
    v = meant_float(v)
    return v.item() if isinstance(v, np.generic) else v


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted model was called before ``fit`` (as scikit-learn's)."""


# ----------------------------------------------------------------------------- explanations
@dataclass
class Explanation:
    """Why one sample got its prediction: the kept concepts ranked by contribution.

    ``sum(contribution) + rest + bias == logit`` (up to rounding), where
    ``rest`` sums the contributions of the kept concepts not listed.

    Attributes
    ----------
    sample : int
        Row of the sample in the array passed to :meth:`InterpretablePredictor.explain`.
    predicted : label
        Predicted class (original label).
    probability : float
        Softmax probability of the predicted class.
    logit, bias : float
        Logit of the predicted class and the class bias ``b[y]``.
    concepts : list of str
        Names of the listed concepts, best first.
    concept_index : ndarray of int
        Their indices in the library.
    activation, weight, contribution : ndarray of float
        ``a_m`` (normalised, masked activation), ``W[y, m]`` and ``W[y, m] * a_m``.
    rest : float
        Sum of the contributions of the kept concepts not listed.
    n_kept : int
        Concepts kept by the sparsity mask for this sample (k; for an elastic-net head, those
        of them with a nonzero weight for the predicted class).
    order : {"signed", "magnitude"}
        How the concepts were ranked.
    """

    sample: int
    predicted: Any
    probability: float
    logit: float
    bias: float
    concepts: List[str]
    concept_index: np.ndarray
    activation: np.ndarray
    weight: np.ndarray
    contribution: np.ndarray
    rest: float
    n_kept: int
    order: str = "signed"

    def to_dict(self) -> Dict[str, Any]:
        """Plain-Python dictionary, JSON-serialisable."""
        return {
            "sample": int(self.sample), "predicted": _py(self.predicted), "probability": float(self.probability),
            "logit": float(self.logit), "bias": float(self.bias), "rest": float(self.rest),
            "n_kept": int(self.n_kept), "order": self.order,
            "concepts": [
                {"name": n, "index": int(i), "activation": float(a), "weight": float(w),
                 "contribution": float(c)}
                for n, i, a, w, c in zip(self.concepts, self.concept_index, self.activation,
                                         self.weight, self.contribution)],
        }

    def to_text(self, width: int = 32) -> str:
        """Short text form (what ``iis explain`` prints)."""
        lines = [f"sample {self.sample}: predicted {self.predicted!r} "
                 f"(p={self.probability:.3f}, logit {self.logit:+.3f})"]
        width = min(width, max([len(printable(n)) for n in self.concepts] + [1]))
        for n, a, w, c in zip(self.concepts, self.activation, self.weight, self.contribution):
            n = printable(n)
            shown = n if len(n) <= width else n[:width - 1] + "\u2026"
            lines.append(f"  {c:+8.3f}  {shown:<{width}}  (a={a:+.2f}, w={w:+.2f})")
        hidden = self.n_kept - len(self.concepts)
        if hidden > 0:
            lines.append(f"  {self.rest:+8.3f}  other {hidden} kept concepts")
        lines.append(f"  {self.bias:+8.3f}  bias")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def plot(self, ax: Any = None, show_rest: bool = True, max_label: int = 40) -> Any:
        """Horizontal bar chart of the listed contributions (matplotlib); returns the axes.

        Bars to the right push towards the predicted class, bars to the left
        against it; the remaining kept concepts and the bias are drawn in grey.
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover - exercised only without matplotlib
            raise ImportError("Explanation.plot needs matplotlib: pip install matplotlib") from None
        labels = [n if len(n) <= max_label else n[:max_label - 1] + "\u2026" for n in self.concepts]
        values = [float(c) for c in self.contribution]
        colors = ["#2a7ab9" if v >= 0 else "#d0573c" for v in values]
        hidden = self.n_kept - len(self.concepts)
        if show_rest and hidden > 0:
            labels.append(f"other {hidden} kept concepts")
            values.append(float(self.rest))
            colors.append("#9a9a9a")
        if show_rest:
            labels.append("bias")
            values.append(float(self.bias))
            colors.append("#c8c8c8")
        if ax is None:
            _, ax = plt.subplots(figsize=(6.4, 0.42 * len(values) + 1.3))
        pos = np.arange(len(values))[::-1]
        bars = ax.barh(pos, values, color=colors, height=0.7)
        ax.set_yticks(pos)
        ax.set_yticklabels(labels, fontsize=9)
        ax.axvline(0.0, color="black", lw=0.8)
        lo, hi = min(0.0, min(values)), max(0.0, max(values))
        span = max(hi - lo, 1e-12)
        for b, v in zip(bars, values):
            ax.text(v + (0.02 if v >= 0 else -0.02) * span, b.get_y() + b.get_height() / 2,
                    f"{v:+.2f}", va="center", ha="left" if v >= 0 else "right", fontsize=8)
        ax.set_xlim(lo - (0.2 * span if lo < 0 else 0.03 * span), hi + (0.2 * span if hi > 0 else 0.03 * span))
        ax.set_xlabel(f"contribution W[y, m] \u00b7 a_m to the logit of {self.predicted!r} "
                      "(blue: for, red: against)", fontsize=9)
        ax.set_title(f"predicted {self.predicted!r}  (p={self.probability:.2f}, logit {self.logit:+.2f})",
                     fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        return ax


# ----------------------------------------------------------------------------- the estimator
class InterpretablePredictor:
    """Sparse concept-bottleneck classifier of docs/method.md section 7, scikit-learn style.

    ``logits = W @ mask_s(norm(x @ unit(P).T)) + b``: multinomial logistic
    regression (L-BFGS in the C core, the interpretable predictor of
    :func:`iis.score`) on the k(s) concept activations of largest magnitude per
    sample.

    Parameters
    ----------
    library : ConceptLibrary or array (M, d)
        Concept library ``P`` (a text library gives named concepts).
    sparsity : float in [0, 1)
        Ratio s; each sample keeps ``k = M - floor(M s)`` concepts.
    normalize : {"layernorm", "standardize", "none"} or None
        Normalisation of the activations; None takes ``library.default_normalize``.
        ``"standardize"`` uses the train statistics, stored in the model.
    mask : {"hard", "soft"}
        Hard top-k mask or soft threshold (docs/method.md section 3).
    keep : {"default", "published"}
        ``k = M - floor(M s)``, or one fewer as the published code does. Where
        that keeps no concept (k = 0) the model is the bias-only classifier: the
        train class priors, predicting the most frequent train class, as
        :func:`iis.score` fits at such a ratio.
    l2, tol, max_iter
        Penalty ``mean CE + l2/2 ||W||^2`` and L-BFGS stopping rule, as :func:`iis.score`
        (``penalty="l2"``); with ``penalty="elasticnet"``, ``tol`` and ``max_iter`` are the
        stopping rule of :func:`iis.sparse_path` at each lambda.
    n_threads : int or None
        Threads for the C core and BLAS (None = all cores).
    penalty : {"l2", "elasticnet"}
        ``"elasticnet"``: a sparse head (few concepts per class) from the multinomial
        elastic-net path of :func:`iis.sparse_path` (L1 share ``alpha``) on the masked
        activations. The point of the path is chosen on a stratified hold-out of 20% of
        the train rows (never on an evaluation split): the best hold-out accuracy among
        the points with at most ``nonzeros_per_class`` nonzero weights in every class
        (all points when None); the path is then run again on all train rows down to that
        lambda (the last point within the budget is kept). Explanations list only the
        class's concepts with a nonzero weight.
    alpha : float in (0, 1]
        L1 share of the elastic net (``penalty="elasticnet"`` only).
    nonzeros_per_class : int or None
        Budget of nonzero weights per class (``penalty="elasticnet"`` only).

    Attributes
    ----------
    classes_ : ndarray
        The class labels seen in ``fit`` (sorted).
    coef_ : ndarray (n_classes, M)
        ``W``; ``intercept_`` (n_classes,) is ``b``.
    library_ : ConceptLibrary
        The library in use (``concept_names_`` are its names).
    k_ : int
        Concepts kept per sample.
    mean_, std_ : ndarray (M,) or None
        Train statistics of the raw activations for ``normalize="standardize"``.
    n_iter_, converged_, stop_reason_ : int, bool, str
        Solver diagnostics: ``converged_`` is True exactly when max |grad| <= tol;
        ``stop_reason_`` is one of ``iis.STOP_REASONS`` (why the solver stopped).

    Examples
    --------
    >>> clf = iis.InterpretablePredictor(lib, sparsity=0.9).fit(x_train, y_train)
    >>> clf.score(x_eval, y_eval)
    >>> print(clf.explain(x_eval[:1], top=5)[0])
    """

    # scikit-learn is optional and never imported here (it is slow to import):
    # the protocol below is what clone, cross_val_score and the meta-estimators use.
    _estimator_type = "classifier"  # scikit-learn < 1.6

    def __sklearn_tags__(self) -> Any:
        """scikit-learn >= 1.6 tags: a multi-class classifier of 2-D float input."""
        from sklearn.utils import ClassifierTags, InputTags, Tags, TargetTags

        return Tags(estimator_type="classifier", target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags(), input_tags=InputTags())

    def __init__(self, library: Any = None, sparsity: float = 0.0, normalize: Optional[str] = None,
                 mask: str = "hard", keep: str = "default", l2: float = 1e-4, tol: float = 1e-5,
                 max_iter: int = 1000, n_threads: Optional[int] = None, penalty: str = "l2",
                 alpha: float = 0.99, nonzeros_per_class: Optional[int] = None) -> None:
        self.library = library
        self.sparsity = sparsity
        self.normalize = normalize
        self.mask = mask
        self.keep = keep
        self.l2 = l2
        self.tol = tol
        self.max_iter = max_iter
        self.n_threads = n_threads
        self.penalty = penalty
        self.alpha = alpha
        self.nonzeros_per_class = nonzeros_per_class

    # ------------------------------------------------------------ scikit-learn protocol
    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        """Constructor parameters (scikit-learn protocol)."""
        return {name: getattr(self, name) for name in _PARAMS}

    def set_params(self, **params: Any) -> "InterpretablePredictor":
        """Set constructor parameters (scikit-learn protocol); returns self."""
        for name, value in params.items():
            if name not in _PARAMS:
                raise ValueError(f"invalid parameter {name!r} for InterpretablePredictor; "
                                 f"valid parameters are {list(_PARAMS)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        lib = self.library
        lib_s = repr(lib) if isinstance(lib, ConceptLibrary) or lib is None else \
            f"<array {getattr(lib, 'shape', '?')}>"
        args = [f"library={lib_s}"] + [f"{n}={getattr(self, n)!r}" for n in _PARAMS[1:]]
        fitted = ", fitted" if hasattr(self, "coef_") else ""
        return f"InterpretablePredictor({', '.join(args)}{fitted})"

    # -------------------------------------------------------------------------- fitting
    def _check_params(self, d: int) -> Tuple[ConceptLibrary, str, int]:
        if self.library is None:
            raise ValueError("InterpretablePredictor needs a concept library (library=...)")
        lib = self.library if isinstance(self.library, ConceptLibrary) else ConceptLibrary(self.library)
        if lib.dim != d:
            raise ValueError(f"features have d={d} but the concept library has d={lib.dim}")
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not (0.0 <= float(s) < 1.0):
            raise ValueError(f"sparsity must be a number in [0, 1), got {s!r}")
        norm = check_option(self.normalize if self.normalize is not None else lib.default_normalize,
                            "normalize", NORMALIZATIONS)
        check_option(self.mask, "mask", ("hard", "soft"))
        check_option(self.keep, "keep", ("default", "published"))
        check_positive(self.l2, "l2", strict=False)
        check_positive(self.tol, "tol")
        check_positive(self.max_iter, "max_iter", integer=True)
        nt = check_threads(self.n_threads)
        check_option(self.penalty, "penalty", ("l2", "elasticnet"))
        a = self.alpha
        if isinstance(a, bool) or not isinstance(a, numbers.Real) or not (0 < a <= 1):
            raise ValueError(f"alpha must be a number in (0, 1], got {a!r}")
        if self.nonzeros_per_class is not None:
            check_positive(self.nonzeros_per_class, "nonzeros_per_class", integer=True)
        return lib, norm, nt

    def fit(self, X: Any, y: Any) -> "InterpretablePredictor":
        """Fit ``W, b`` on the masked concept activations of ``X``.

        Parameters
        ----------
        X : array-like (n, d)
            Representation features (float32/float64).
        y : array-like (n,)
            Class labels, at least 2 classes (integers, strings, bools or
            integral floats, as :func:`iis.score` takes them).

        Returns
        -------
        self
        """
        from ._api import STOP_REASONS, ConvergenceWarning, _checked, _project, convergence_message

        x = as_float_matrix(X, "X", check_finite=False)  # checked by the projection kernel
        lib, norm, nt = self._check_params(x.shape[1])
        classes, yy, _ = encode_labels(y)
        if yy.shape[0] != x.shape[0]:
            raise ValueError(f"y has {yy.shape[0]} entries but X has {x.shape[0]} rows")
        if len(classes) < 2:
            raise ValueError(f"y holds {len(classes)} class; a classifier needs at least 2")
        M, K = lib.n_concepts, len(classes)
        k = int(_core.keep_count(M, float(meant_float(self.sparsity)), published=self.keep == "published"))
        with single_blas():
            unit_p = lib._unit(x.dtype)
            if norm == "layernorm":
                warn_if_layernorm_at_chance(x, unit_p, "X")
            mean = std = None
            if norm == "standardize":
                a = _checked(_core.project(x, unit_p, n_threads=nt, check=True, kernels=kernels()), x, "X")
                mean, std = _core.colstats(a, n_threads=nt)
                a -= mean
                a /= std
            else:
                a = _project(x, unit_p, norm, None, nt, "X")
            self.lambda_ = None
            if self.penalty == "elasticnet":
                dense = _core.topk(a, k, soft=self.mask == "soft", dense=True, n_threads=nt, kernels=kernels())
                del a
                w, b, n_iter, conv, loss = self._fit_sparse(dense, yy, nt)
                w, b = w.astype(x.dtype), b.astype(x.dtype)
                stop = 0 if conv else 1  # the path stops at max KKT violation <= tol or at max_iter
            else:
                idx, val = _core.topk(a, k, soft=self.mask == "soft", n_threads=nt, kernels=kernels())
                del a
                w, b, n_iter, conv, loss, _, stop = _core.logreg_fit(
                    None, idx=idx, val=val, d=M, y=yy, n_classes=K, l2=float(self.l2), tol=float(self.tol),
                    max_iter=min(int(self.max_iter), 2**31 - 1), n_threads=nt, kernels=kernels())
        if not conv:
            warnings.warn(convergence_message("the interpretable predictor", STOP_REASONS[stop], self.tol,
                                              self.max_iter), ConvergenceWarning, stacklevel=2)
        self.library_ = lib
        self.normalize_ = norm
        self.classes_ = classes
        self.n_features_in_ = int(x.shape[1])
        self.k_ = k
        self.mean_, self.std_ = mean, std
        self.coef_ = np.ascontiguousarray(w.T)
        self.intercept_ = b
        self.n_iter_ = int(n_iter)
        self.converged_ = bool(conv)
        self.stop_reason_ = STOP_REASONS[stop]
        self.loss_ = float(loss)
        return self

    def _fit_sparse(self, a: np.ndarray, y: np.ndarray, nt: int) -> tuple:
        """The elastic-net head: the path's point chosen on a stratified train hold-out,
        refitted on all rows. Returns (W (M, K) float64, b, iterations, converged, loss)."""
        from ._sparse import sparse_path

        rng = np.random.default_rng(0)
        hold = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:int(_HOLDOUT * np.sum(y == c))]
                               for c in range(int(y.max()) + 1)]).astype(np.int64)
        fit = np.setdiff1d(np.arange(len(y)), hold)
        opts = dict(alpha=float(self.alpha), tol=float(self.tol), max_iter=int(self.max_iter), n_threads=nt or None)
        budget = np.inf if self.nonzeros_per_class is None else int(self.nonzeros_per_class)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the refit below warns if its own points fail
            p = sparse_path(a[fit], y[fit], eval=(a[hold], y[hold]) if hold.size else None, **opts)
        ok = np.flatnonzero(p.nonzeros_per_class.max(axis=1) <= budget)  # never empty: W = 0 first
        score = p.eval_accuracy[ok] if hold.size else p.nonzeros[ok]
        best = int(ok[np.argmax(score)])  # ties: the sparser (earlier) point
        full = sparse_path(a, y, lambdas=p.lambdas[:best + 1], **opts)
        i = int(np.flatnonzero(full.nonzeros_per_class.max(axis=1) <= budget)[-1])
        self.lambda_ = float(full.lambdas[i])
        return (full.coef(i), full.intercepts[i], int(full.n_iter.sum()), bool(full.converged.all()),
                float(full.loss[i]))

    # ------------------------------------------------------------------------ predicting
    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError("this InterpretablePredictor is not fitted yet; call fit(X, y) first")

    def _masked(self, X: Any, dense: bool = False):
        """(idx, val) ELL masked activations of X (or the dense masked matrix)."""
        from ._api import _project

        self._check_fitted()
        dt = self.coef_.dtype
        x = as_float_matrix(X, "X", dtype=dt, check_finite=False)  # checked by the projection kernel
        if x.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {x.shape[1]} features but the predictor was fitted on "
                             f"{self.n_features_in_}")
        nt = check_threads(self.n_threads)
        with single_blas():
            unit_p = self.library_._unit(dt)
            stats = (self.mean_, self.std_) if self.normalize_ == "standardize" else None
            a = _project(x, unit_p, self.normalize_, stats, nt, "X")
            return _core.topk(a, self.k_, soft=self.mask == "soft", dense=dense, n_threads=nt, kernels=kernels())

    def _logits(self, idx: np.ndarray, val: np.ndarray) -> np.ndarray:
        w = np.ascontiguousarray(self.coef_.T)
        logits, _ = _core.logreg_predict(None, idx=idx, val=val, d=self.library_.n_concepts, w=w,
                                         b=np.ascontiguousarray(self.intercept_),
                                         n_threads=check_threads(self.n_threads), kernels=kernels())
        return logits

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits ``W @ mask_s(a(x)) + b`` (n, n_classes), in the model's dtype."""
        return self._logits(*self._masked(X))

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class labels (ties: the lower class)."""
        logits = self.decision_function(X)
        return self.classes_[np.argmax(logits, axis=1)]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Softmax of the logits, columns in the order of ``classes_`` (float64)."""
        z = self.decision_function(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Top-1 accuracy on ``(X, y)``.

        Labels are matched to ``classes_`` as :func:`iis.score` matches eval labels:
        labels outside ``classes_`` count as errors, with a UserWarning; a
        ValueError when no label of ``y`` is among them.
        """
        self._check_fitted()
        codes = match_labels(self.classes_, y, "y", known="the fitted model")
        logits = self.decision_function(X)
        if codes.shape[0] != logits.shape[0]:
            raise ValueError(f"y has {codes.shape[0]} entries but X has {logits.shape[0]} rows")
        hit = (np.argmax(logits, axis=1) == codes).astype(np.float64)
        if sample_weight is None:
            return float(hit.mean())
        sw = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
        if sw.shape[0] != hit.shape[0] or not np.all(np.isfinite(sw)) or np.any(sw < 0) or sw.sum() <= 0:
            raise ValueError("sample_weight must be finite, non-negative, one per row, not all zero")
        return float(np.dot(hit, sw) / sw.sum())

    # ---------------------------------------------------------------------- explaining
    @property
    def concept_names_(self) -> List[str]:
        self._check_fitted()
        return list(self.library_.names)

    def explain(self, X: Any, top: Optional[int] = 5, by: str = "signed") -> List[Explanation]:
        """Per sample, the predicted class and the kept concepts ranked by contribution.

        Parameters
        ----------
        X : array-like (n, d)
        top : int or None
            How many concepts to list (None: all k kept ones).
        by : {"signed", "magnitude"}
            Rank by ``W[y, m] * a_m`` (largest support first) or by its absolute value.

        Returns
        -------
        list of Explanation
            One per row; ``sum(contribution) + rest + bias`` equals the logit
            of the predicted class.
        """
        if top is not None and (isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1):
            raise ValueError(f"top must be a positive integer or None, got {top!r}")
        check_option(by, "by", _ORDERS)
        idx, val = self._masked(X)
        logits = self._logits(idx, val).astype(np.float64)
        w = self.coef_.astype(np.float64)
        b = self.intercept_.astype(np.float64)
        val = val.astype(np.float64)
        names = self.library_.names
        pred = np.argmax(logits, axis=1)
        zs = logits - logits.max(axis=1, keepdims=True)
        prob = np.exp(zs) / np.exp(zs).sum(axis=1, keepdims=True)
        out = []
        for i in range(idx.shape[0]):
            yi = int(pred[i])
            wy = w[yi, idx[i]]
            contrib = wy * val[i]
            key = -np.abs(contrib) if by == "magnitude" else -contrib
            order = np.lexsort((idx[i], key))  # ties: lower concept index first
            if self.penalty == "elasticnet":  # a sparse head: only the class's own concepts
                order = order[wy[order] != 0]
            shown = order if top is None else order[:top]
            rest = float(contrib.sum() - contrib[shown].sum()) if len(shown) < len(order) else 0.0
            out.append(Explanation(
                sample=i, predicted=_py(self.classes_[yi]), probability=float(prob[i, yi]),
                logit=float(logits[i, yi]), bias=float(b[yi]),
                concepts=[names[j] for j in idx[i, shown]], concept_index=idx[i, shown].astype(np.int64),
                activation=val[i, shown], weight=wy[shown], contribution=contrib[shown], rest=rest,
                n_kept=int(len(order)), order=by))
        return out

    def global_explanation(self, top: Optional[int] = 10, by: str = "signed") -> Dict[Any, List[Tuple[str, float]]]:
        """For each class, the concepts whose weights ``W[c, m]`` weigh most.

        Parameters
        ----------
        top : int or None
            Concepts per class (None: all M).
        by : {"signed", "magnitude"}
            Largest weights first (evidence for the class when the activation
            is positive), or largest ``|W[c, m]|``.

        Returns
        -------
        dict
            ``{class label: [(concept name, weight), ...]}``, best first.
        """
        self._check_fitted()
        if top is not None and (isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1):
            raise ValueError(f"top must be a positive integer or None, got {top!r}")
        check_option(by, "by", _ORDERS)
        w = self.coef_.astype(np.float64)
        names = self.library_.names
        cols = np.arange(w.shape[1])
        out: Dict[Any, List[Tuple[str, float]]] = {}
        for c, label in enumerate(self.classes_):
            key = -np.abs(w[c]) if by == "magnitude" else -w[c]
            order = np.lexsort((cols, key))
            if self.penalty == "elasticnet":
                order = order[w[c, order] != 0]
            if top is not None:
                order = order[:top]
            out[_py(label)] = [(names[j], float(w[c, j])) for j in order]
        return out

    def global_explanation_text(self, top: Optional[int] = 10, by: str = "signed") -> str:
        """:meth:`global_explanation` as short text, one block per class."""
        lines = []
        for label, items in self.global_explanation(top, by).items():
            lines.append(f"class {label!r}:")
            lines.extend(f"  {wt:+8.3f}  {printable(name)}" for name, wt in items)
        return "\n".join(lines)

    # ------------------------------------------------------------------------ save/load
    def save(self, path: "str | os.PathLike") -> None:
        """Write the fitted model to ``.npz`` (plain arrays and JSON text; no pickles).

        ``path`` is a file name (``.npz`` is appended when missing, as NumPy does)
        or a binary file object. NumPy scalar hyperparameters (as ``GridSearchCV``
        hands back) are saved as Python numbers."""
        self._check_fitted()
        classes = np.asarray(self.classes_)
        if classes.dtype.kind not in "biufUS":
            raise ValueError(f"classes of dtype {classes.dtype} cannot be saved without pickles; "
                             "use integer or string labels")
        params = {n: _py(getattr(self, n)) for n in _PARAMS[1:]}
        info = {"normalize_": self.normalize_, "k_": self.k_, "n_features_in_": self.n_features_in_,
                "n_iter_": self.n_iter_, "converged_": self.converged_, "stop_reason_": self.stop_reason_,
                "loss_": self.loss_, "lambda_": self.lambda_}
        try:
            params_text, info_text = json.dumps(params), json.dumps(info)
        except TypeError as exc:
            raise TypeError(f"hyperparameters that cannot be saved as JSON: {exc}") from None
        arrays = dict(
            format=np.asarray(_FORMAT), params=np.asarray(params_text),
            info=np.asarray(info_text), coef=self.coef_, intercept=self.intercept_,
            classes=classes, library_vectors=self.library_.vectors,
            library_names=np.asarray(self.library_.names, dtype=str),
            library_kind=np.asarray(self.library_.kind),
            library_default_normalize=np.asarray(self.library_.default_normalize))
        if self.mean_ is not None:
            arrays["mean"] = self.mean_
            arrays["std"] = self.std_
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: "str | os.PathLike") -> "InterpretablePredictor":
        """Read a model written by :meth:`save` (a path, ``"x"`` for ``x.npz``, or a binary
        file object). Only the model's members are read and no code is run; every
        member is checked (shapes, finite weights, std > 0, known options, k, distinct
        classes) and an inconsistent file raises ValueError naming the member."""
        data = read_npz(path, "predictor", ("format",) + _SAVED_ARRAYS + ("mean", "std"))
        where = f"predictor file {getattr(path, 'name', '<file object>') if hasattr(path, 'read') else path!r}"
        fmt = data.get("format")
        if fmt is None or fmt.shape != () or fmt.dtype.kind != "U" or str(fmt) != _FORMAT:
            raise ValueError(f"{where}: not an iis InterpretablePredictor file (expected format {_FORMAT!r})")
        missing = [k for k in _SAVED_ARRAYS if k not in data]
        if missing:  # e.g. a damaged member name: the archive itself still reads
            raise ValueError(f"{where}: predictor file without {', '.join(missing)} (damaged or not "
                             "written by InterpretablePredictor.save)")
        return cls._from_arrays(where, data)

    @classmethod
    def _from_arrays(cls, where: str, data: dict) -> "InterpretablePredictor":
        from ._library import library_from_arrays

        lib = library_from_arrays(data, where, "library_")
        params, info = (_json_member(data, k, where) for k in ("params", "info"))
        unknown = sorted(set(params) - set(_PARAMS[1:]))
        if unknown:
            raise ValueError(f"{where}: member 'params' has unknown parameters {unknown}")
        model = cls(library=lib, **params)
        try:
            lib, _, _ = model._check_params(lib.dim)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: member 'params': {exc}") from None
        M = lib.n_concepts
        classes = data["classes"]
        if classes.ndim != 1 or classes.dtype.kind not in "biufUS" or classes.size < 2:
            raise ValueError(f"{where}: member 'classes' must be a 1-D array of at least 2 integer or string "
                             f"labels, got {classes.dtype} of shape {classes.shape}")
        if classes.dtype.kind == "f" and not np.all(np.isfinite(classes)):
            raise ValueError(f"{where}: member 'classes' contains NaN or Inf")
        if np.unique(classes).size != classes.size:
            raise ValueError(f"{where}: member 'classes' has duplicated classes")
        K = classes.size
        coef, intercept = data["coef"], data["intercept"]
        for key, arr, shape in (("coef", coef, (K, M)), ("intercept", intercept, (K,))):
            if arr.dtype not in (np.float32, np.float64) or arr.shape != shape or arr.dtype != coef.dtype:
                raise ValueError(f"{where}: member {key!r} must be float32/float64 of shape {shape} (one "
                                 f"dtype for coef and intercept), got {arr.dtype} of shape {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{where}: member {key!r} contains NaN or Inf")
        norm = info.get("normalize_")
        if norm not in NORMALIZATIONS or norm != (model.normalize or lib.default_normalize):
            raise ValueError(f"{where}: member 'info' has normalize_={norm!r}, not the model's normalisation")
        k = int(_core.keep_count(M, float(meant_float(model.sparsity)), model.keep == "published"))
        checks = {"k_": k, "n_features_in_": lib.dim}
        for key, want in checks.items():
            v = info.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v != want:
                raise ValueError(f"{where}: member 'info' has {key}={v!r}; the model's parameters give {want}")
        mean, std = data.get("mean"), data.get("std")
        if norm == "standardize":
            for key, arr in (("mean", mean), ("std", std)):
                if arr is None or arr.shape != (M,) or arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
                    raise ValueError(f"{where}: member {key!r} must hold {M} finite train statistics for a "
                                     "standardize model")
            if not np.all(std > 0):
                raise ValueError(f"{where}: member 'std' must be > 0 (a zero std divides by zero)")
        else:
            mean = std = None
        model.library_ = lib
        model.normalize_ = norm
        model.classes_ = classes
        model.n_features_in_ = lib.dim
        model.k_ = k
        model.mean_, model.std_ = mean, std
        model.coef_ = np.ascontiguousarray(coef)
        model.intercept_ = np.ascontiguousarray(intercept)
        try:
            model.n_iter_ = int(info.get("n_iter_", 0))
            model.converged_ = bool(info.get("converged_", True))
            model.loss_ = float(info.get("loss_", np.nan))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: member 'info' has bad diagnostics ({exc})") from None
        # files written before stop reasons were recorded
        model.stop_reason_ = info.get("stop_reason_", "converged" if model.converged_ else "max_iter")
        from ._api import STOP_REASONS
        if model.stop_reason_ not in STOP_REASONS:
            raise ValueError(f"{where}: member 'info' has an unknown stop reason {model.stop_reason_!r}")
        model.lambda_ = info.get("lambda_")
        return model


def _json_member(data: dict, key: str, where: str) -> dict:
    """A JSON object saved as a 0-d string member."""
    v = data[key]
    if v.shape != () or v.dtype.kind != "U":
        raise ValueError(f"{where}: member {key!r} must be JSON text, got {v.dtype} of shape {v.shape}")
    try:
        out = json.loads(str(v))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{where}: member {key!r} is not valid JSON ({exc})") from None
    if not isinstance(out, dict):
        raise ValueError(f"{where}: member {key!r} must be a JSON object")
    return out
