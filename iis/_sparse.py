"""Sparse concept heads: the multinomial elastic-net path.

The C core (``csrc/sparse.c``) solves each point of the path
``mean CE(A W + b, y) + lambda (alpha R(W) + (1 - alpha)/2 ||W||_F^2)``,
``R(W) = ||W||_1`` or, grouped, the sum of the concepts' row norms across classes,
to ``max KKT violation <= tol``, warm-started from the previous lambda with the
strong rule screening the concepts and a KKT check re-adding violators, by proximal
Newton steps whose quadratic model (the design's Gram times a class factor) is minimised by
coordinate descent without reading the data.
"""
from __future__ import annotations

import numbers
import time
import warnings
from typing import Any, Dict, List, Optional

import numpy as np

from . import _core
from ._validation import (as_float_matrix, check_positive, check_threads, encode_labels, json_text,
                          single_blas)


class SparsePath:
    """The elastic-net path: one fitted head per lambda (largest lambda first).

    Attributes
    ----------
    lambdas : ndarray (L,)
    alpha : float
        L1 share of the penalty.
    grouped : bool
        Whether the penalty is the sum of the concepts' row norms across classes.
    classes : ndarray (K,)
        Class labels (sorted); column k of every weight matrix belongs to ``classes[k]``.
    weights : list of scipy.sparse.csr_matrix (M, K)
        ``W`` at each lambda (concept j, class k); ``intercepts`` (L, K) the ``b``.
    nonzeros : ndarray (L,)
        Nonzero weights; ``nonzeros_per_class`` (L, K) per class, ``concepts_used`` (L,)
        concepts with a nonzero weight for some class.
    objective, loss, kkt : ndarray (L,)
        Penalised train objective, mean train CE, max KKT violation.
    train_accuracy, eval_accuracy : ndarray (L,)
        Top-1 accuracy (``eval_accuracy`` is None without ``eval``).
    n_iter, converged, seconds : ndarray (L,)
        Proximal Newton steps, ``kkt <= tol``, wall time of each point.
    """

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __len__(self) -> int:
        return len(self.lambdas)

    def coef(self, i: int) -> np.ndarray:
        """Dense ``W`` (M, K) at point ``i``."""
        return self.weights[i].toarray()

    def decision_function(self, activations: Any, i: int) -> np.ndarray:
        """Logits ``A W_i + b_i`` (n, K) of the head at point ``i``."""
        a = as_float_matrix(activations, "activations", dtype=np.float64)
        if a.shape[1] != self.weights[i].shape[0]:
            raise ValueError(f"activations have {a.shape[1]} columns but the path was fitted on "
                             f"{self.weights[i].shape[0]} concepts")
        return np.asarray(self.weights[i].T.dot(a.T).T) + self.intercepts[i]

    def predict(self, activations: Any, i: int) -> np.ndarray:
        """Class labels predicted by the head at point ``i`` (ties: the lower class)."""
        return self.classes[np.argmax(self.decision_function(activations, i), axis=1)]

    def to_dict(self) -> Dict[str, Any]:
        """Plain Python data (JSON-ready); weights as (concept, class, value) triplets."""
        pts = []
        for i in range(len(self)):
            w = self.weights[i].tocoo()
            pts.append({
                "lambda": float(self.lambdas[i]), "nonzeros": int(self.nonzeros[i]),
                "nonzeros_per_class": self.nonzeros_per_class[i].tolist(),
                "concepts_used": int(self.concepts_used[i]),
                "objective": float(self.objective[i]), "loss": float(self.loss[i]),
                "kkt": float(self.kkt[i]), "n_iter": int(self.n_iter[i]),
                "converged": bool(self.converged[i]), "seconds": float(self.seconds[i]),
                "train_accuracy": float(self.train_accuracy[i]),
                "eval_accuracy": None if self.eval_accuracy is None else float(self.eval_accuracy[i]),
                "intercept": self.intercepts[i].tolist(),
                "weights": {"concept": w.row.tolist(), "class": w.col.tolist(), "value": w.data.tolist()},
            })
        return {"alpha": self.alpha, "grouped": self.grouped, "tol": self.tol,
                "classes": [c.item() if hasattr(c, "item") else c for c in self.classes],
                "n_concepts": int(self.weights[0].shape[0]), "path": pts}

    def to_json(self, path: Optional[str] = None, indent: int = 2) -> str:
        """``to_dict()`` as JSON text, also written to ``path`` when given."""
        return json_text(self.to_dict(), path, indent)

    def plot(self, ax: Any = None) -> Any:
        """Accuracy (eval where given, else train) against the number of nonzero weights."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        acc = self.eval_accuracy if self.eval_accuracy is not None else self.train_accuracy
        ax.plot(self.nonzeros, acc, marker=".")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("nonzero weights")
        ax.set_ylabel("eval accuracy" if self.eval_accuracy is not None else "train accuracy")
        ax.set_title(f"elastic-net path (alpha={self.alpha}{', grouped' if self.grouped else ''})")
        ax.grid(True, alpha=0.3)
        return ax

    def __repr__(self) -> str:
        ev = self.eval_accuracy is not None
        head = (f"SparsePath({len(self)} lambdas, alpha={self.alpha}, grouped={self.grouped}, "
                f"{self.weights[0].shape[0]} concepts, {len(self.classes)} classes, tol={self.tol:g})")
        rows = [f"{'lambda':>10} {'nonzeros':>9} {'concepts':>8} {'objective':>10} "
                f"{'train acc':>9}{' eval acc' if ev else ''} {'kkt':>8} {'iter':>5}"]
        for i in range(len(self)):
            rows.append(f"{self.lambdas[i]:10.4g} {self.nonzeros[i]:9d} {self.concepts_used[i]:8d} "
                        f"{self.objective[i]:10.5f} {self.train_accuracy[i]:9.4f}"
                        + (f" {self.eval_accuracy[i]:8.4f}" if ev else "")
                        + f" {self.kkt[i]:8.1e} {self.n_iter[i]:5d}" + ("" if self.converged[i] else " *"))
        tail = [] if all(self.converged) else ["* did not reach tol within max_iter"]
        return "\n".join([head] + rows + tail)


def _penalty(w: np.ndarray, lam: float, alpha: float, grouped: bool) -> float:
    """lambda (alpha R(W) + (1 - alpha)/2 ||W||^2)."""
    r = np.sqrt((w * w).sum(axis=1)).sum() if grouped else np.abs(w).sum()
    return lam * (alpha * r + 0.5 * (1 - alpha) * (w * w).sum())


def sparse_path(activations: Any, labels: Any, *, alpha: float = 0.99, n_lambdas: int = 100,
                lambda_min_ratio: float = 1e-3, lambdas: Any = None, grouped: bool = False,
                eval: Any = None, tol: float = 1e-4, max_iter: int = 10_000,
                n_threads: Optional[int] = None) -> SparsePath:
    """Multinomial elastic-net path of a concept head, from lambda_max down (glmnet-style).

    At each lambda the C core minimises, in float64,
    ``mean CE(A W + b, y) + lambda (alpha R(W) + (1 - alpha)/2 ||W||_F^2)`` with
    ``R(W) = ||W||_1`` (or, with ``grouped``, ``sum_j ||W[j, :]||_2``: a concept leaves all
    classes at once) and unpenalised intercepts ``b``, by proximal Newton steps on the
    concepts the strong rule keeps, warm-started from the previous lambda; a KKT check
    over all concepts re-adds any the rule dropped wrongly.

    Parameters
    ----------
    activations : array-like (n, M)
        Concept activations of the train split (float32/float64; used as float64, one copy
        when given float32).
    labels : array-like (n,)
        Any hashable labels (at least 2 classes).
    alpha : float in (0, 1]
        L1 share of the penalty (glm-saga and Label-free CBM use 0.99).
    n_lambdas, lambda_min_ratio
        The grid: ``n_lambdas`` values log-spaced from ``lambda_max`` (the smallest lambda at
        which ``W = 0``) down to ``lambda_min_ratio * lambda_max``.
    lambdas : array-like, optional
        An explicit decreasing grid instead.
    grouped : bool
        Group penalty across classes.
    eval : tuple (activations, labels), optional
        An evaluation split: its accuracy is recorded per lambda (never used to choose).
    tol : float
        Stopping rule: at each lambda, the largest KKT violation over all weights and
        intercepts is ``<= tol``, i.e. with ``g = dCE/dW + lambda (1 - alpha) W``:
        ``|g + lambda alpha sign(w)| <= tol`` where ``w != 0``, ``|g| <= lambda alpha + tol``
        where ``w = 0`` (grouped: the same for the rows' 2-norms), ``|dCE/db| <= tol``.
        The bound is absolute, on the gradient's scale: with activations of unit scale,
        ``tol`` well below ``lambda_min_ratio * lambda_max`` keeps the low end of the path
        apart from its neighbours (a point whose previous solution already meets ``tol``
        takes no step).
    max_iter : int
        Proximal Newton steps per lambda at most (a ConvergenceWarning otherwise).
    n_threads : int or None
        OpenMP threads (None = all cores); the result has the same bits for any count.

    Returns
    -------
    SparsePath
    """
    from ._api import ConvergenceWarning

    a = as_float_matrix(activations, "activations", dtype=np.float64)
    classes, y, _ = encode_labels(labels)
    if y.shape[0] != a.shape[0]:
        raise ValueError(f"labels has {y.shape[0]} entries but activations has {a.shape[0]} rows")
    if len(classes) < 2:
        raise ValueError(f"labels hold {len(classes)} class; a classifier needs at least 2")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (0 < alpha <= 1):
        raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
    check_positive(tol, "tol")
    check_positive(max_iter, "max_iter", integer=True)
    nt = check_threads(n_threads)
    ev = None
    if eval is not None:
        if not isinstance(eval, (tuple, list)) or len(eval) != 2:
            raise TypeError("eval must be a tuple (activations, labels)")
        ea = as_float_matrix(eval[0], "eval activations", dtype=np.float64)
        _, _, (ey,) = encode_labels(labels, [eval[1]], ["eval labels"])
        if ea.shape[1] != a.shape[1] or ea.shape[0] != ey.shape[0]:
            raise ValueError(f"eval activations have shape {ea.shape} and {ey.shape[0]} labels; "
                             f"expected {a.shape[1]} columns and one label per row")
        ev = (ea, ey)
    M, K = a.shape[1], len(classes)
    freq = np.bincount(y, minlength=K) / y.shape[0]
    w = np.zeros((M, K))
    b = np.log(freq)
    with single_blas():
        _, grad, grad_b = _core.enet_objective(a, y, K, w, b, n_threads=nt)
        score = np.sqrt((grad * grad).sum(axis=1)) if grouped else np.abs(grad).max(axis=1)
        lam_max = float(score.max()) / alpha if M else 0.0
        if lambdas is None:
            if not isinstance(n_lambdas, numbers.Integral) or isinstance(n_lambdas, bool) or n_lambdas < 1:
                raise ValueError(f"n_lambdas must be a positive integer, got {n_lambdas!r}")
            if not isinstance(lambda_min_ratio, numbers.Real) or not (0 < lambda_min_ratio <= 1):
                raise ValueError(f"lambda_min_ratio must be in (0, 1], got {lambda_min_ratio!r}")
            lams = lam_max * np.logspace(0, np.log10(lambda_min_ratio), int(n_lambdas))
        else:
            lams = np.asarray(lambdas, dtype=np.float64).reshape(-1)
            if lams.size == 0 or not np.all(np.isfinite(lams)) or np.any(lams < 0) or np.any(np.diff(lams) > 0):
                raise ValueError("lambdas must be a non-empty, non-increasing sequence of finite values >= 0")
        out: Dict[str, List[Any]] = {k: [] for k in (
            "weights", "intercepts", "nonzeros", "nonzeros_per_class", "concepts_used", "objective",
            "loss", "kkt", "n_iter", "converged", "seconds", "train_accuracy", "eval_accuracy")}
        lam_prev = float(lams[0])
        for lam in lams:
            t0 = time.perf_counter()
            info = _core.enet_fit(a, y, K, w, b, grad, grad_b, lam=float(lam), lam_prev=max(lam_prev, float(lam)),
                                  alpha=float(alpha), grouped=bool(grouped), tol=float(tol),
                                  max_iter=min(int(max_iter), 2**31 - 1), n_threads=nt)
            lam_prev = float(lam)
            _record(out, a, y, ev, w, b, float(lam), alpha, grouped, info, time.perf_counter() - t0)
    from scipy import sparse as _sp

    res = SparsePath(
        lambdas=lams, alpha=float(alpha), grouped=bool(grouped), tol=float(tol), classes=classes,
        lambda_max=lam_max, weights=[_sp.csr_matrix(x) for x in out["weights"]],
        intercepts=np.array(out["intercepts"]),
        nonzeros=np.array(out["nonzeros"], dtype=np.int64),
        nonzeros_per_class=np.array(out["nonzeros_per_class"], dtype=np.int64),
        concepts_used=np.array(out["concepts_used"], dtype=np.int64),
        objective=np.array(out["objective"]), loss=np.array(out["loss"]), kkt=np.array(out["kkt"]),
        n_iter=np.array(out["n_iter"], dtype=np.int64), converged=np.array(out["converged"], dtype=bool),
        seconds=np.array(out["seconds"]), train_accuracy=np.array(out["train_accuracy"]),
        eval_accuracy=np.array(out["eval_accuracy"]) if ev is not None else None)
    if not res.converged.all():
        bad = int((~res.converged).sum())
        warnings.warn(f"{bad} of {len(res)} path points did not reach tol={tol} within max_iter={max_iter} "
                      f"(largest KKT violation {res.kkt.max():.2g}); raise max_iter or tol",
                      ConvergenceWarning, stacklevel=2)
    return res


def _record(out, a, y, ev, w, b, lam, alpha, grouped, info, seconds) -> None:
    nz = w != 0
    out["weights"].append(w.copy())
    out["intercepts"].append(b.copy())
    out["nonzeros"].append(int(nz.sum()))
    out["nonzeros_per_class"].append(nz.sum(axis=0))
    out["concepts_used"].append(int(nz.any(axis=1).sum()))
    out["loss"].append(info["loss"])
    out["objective"].append(info["loss"] + _penalty(w, lam, alpha, grouped))
    out["kkt"].append(info["kkt"])
    out["n_iter"].append(info["n_iter"])
    out["converged"].append(bool(info["converged"]))
    out["seconds"].append(seconds)
    out["train_accuracy"].append(float(np.mean(np.argmax(a @ w + b, axis=1) == y)))
    if ev is not None:
        out["eval_accuracy"].append(float(np.mean(np.argmax(ev[0] @ w + b, axis=1) == ev[1])))
