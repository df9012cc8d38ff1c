"""InfoDisent (Struski, Rymarczyk, Tabor et al.; docs/method.md section 6) on spatial feature maps.

An orthogonal rotation U of the final feature map, per-channel signed max pooling over
positions and a non-negative linear head, trained in the C core (``csrc/infodisent.c``).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np

from . import _core
from ._validation import check_threads, single_blas

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8
_PARAMS = ("cayley", "exp")


def _check_maps(maps: Any, d: Optional[int] = None) -> np.ndarray:
    """``maps`` as a C-contiguous float32 (n, H*W, d) array (copied only when needed)."""
    mod = type(maps).__module__ or ""
    if mod.startswith("torch") and hasattr(maps, "detach"):
        maps = maps.detach().cpu().float().numpy()
    m = np.asarray(maps)
    if m.dtype.kind != "f":
        raise TypeError(f"maps must be floating point (float16/32/64), got dtype {m.dtype}")
    if m.ndim != 3:
        raise ValueError(f"maps must be 3-D (n_images, H*W, d) spatial feature maps, got shape {m.shape}; "
                         "iis.torch.extract_features(..., spatial=True) returns them")
    if m.shape[1] == 0:
        raise ValueError(f"maps have H*W = 0 positions (shape {m.shape})")
    if m.shape[0] == 0 or m.shape[2] == 0:
        raise ValueError(f"maps are empty: shape {m.shape}")
    if d is not None and m.shape[2] != d:
        raise ValueError(f"maps have {m.shape[2]} channels but the model was fitted on {d}")
    m = np.ascontiguousarray(m, dtype=np.float32)
    for r0 in range(0, m.shape[0], 1024):
        part = m[r0:r0 + 1024]
        if not np.isfinite(part.max()) or not np.isfinite(part.min()):
            bad = r0 + int(np.flatnonzero(~np.isfinite(part).reshape(len(part), -1).all(axis=1))[0])
            raise ValueError(f"maps contain NaN or Inf (first in image {bad})")
    return m


def _check_int(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


@dataclass
class InfoDisentExplanation:
    """Why one image got its prediction: the channels of ``z = F U`` that weigh most.

    Attributes
    ----------
    sample : int
        Row of the image in the maps passed to :meth:`InfoDisent.explain`.
    predicted : int
        Predicted class.
    probability : float
        Its softmax probability.
    channels : ndarray of int
        The listed channels (columns of U), largest contribution first.
    value, weight, contribution : ndarray of float
        The pooled value ``v_c = max(relu(z_c)) - max(relu(-z_c))``, the head weight
        ``W[y, c] >= 0`` and ``W[y, c] * v_c``.
    position : ndarray of int, shape (top, 2)
        (row, column) on the H x W grid where each channel fires: the arg-max of
        ``z_c`` when ``v_c > 0``, the arg-min when ``v_c < 0`` (-1, -1 when ``v_c = 0``).
    heatmap : ndarray, shape (top, H, W)
        ``z_c`` over the grid, signed so that the side that sets ``v_c`` is positive.
    """

    sample: int
    predicted: int
    probability: float
    channels: np.ndarray
    value: np.ndarray
    weight: np.ndarray
    contribution: np.ndarray
    position: np.ndarray
    heatmap: np.ndarray

    def plot(self, image: Any = None, ax: Any = None, alpha: float = 0.5):
        """Heat maps of the listed channels, upsampled onto ``image`` (H', W'[, 3]) when given.

        Returns the matplotlib axes (one per channel).
        """
        import matplotlib.pyplot as plt

        top = len(self.channels)
        if ax is None:
            _, ax = plt.subplots(1, top, figsize=(2.6 * top, 2.8), squeeze=False)
            ax = ax[0]
        ax = np.atleast_1d(ax)
        for j in range(top):
            a = ax[j]
            h, w = self.heatmap[j].shape
            extent = (-0.5, w - 0.5, h - 0.5, -0.5)
            if image is not None:
                a.imshow(np.asarray(image), extent=extent)
            a.imshow(np.maximum(self.heatmap[j], 0), cmap="jet", alpha=alpha if image is not None else 1.0,
                     extent=extent, interpolation="bilinear")
            r, c = self.position[j]
            if r >= 0:
                a.plot([c], [r], "w+", ms=12, mew=2)
            a.set_title(f"ch {self.channels[j]}: {self.contribution[j]:+.2f}", fontsize=9)
            a.set_xticks([])
            a.set_yticks([])
        return ax


class InfoDisent:
    """InfoDisent: an interpretable head on spatial feature maps (docs/method.md section 6).

    ``z = F U`` with ``U`` a learned d x d orthogonal matrix, per channel the signed max
    pooling ``v_c = max_p relu(z_pc) - max_p relu(-z_pc)`` over the H*W positions, and
    ``logits = W v + b`` with ``W >= 0``; mean cross-entropy. ``U`` comes from a
    skew-symmetric ``A = X - X^T``: ``"cayley"``: ``(I + A)^-1 (I - A)`` (one LAPACK
    ``dgesv`` per step), ``"exp"``: ``expm(A)`` (scaling and squaring with a degree-12
    Taylor polynomial, about 3x the work); either way ``U`` is orthogonal to rounding
    at every step. ``X = 0`` (``U = I``) at the start, ``W ~ U(0, 1/sqrt(d))``, ``b = 0``.
    The max is exact in both passes (its subgradient goes to the arg-max position; the
    paper's Gumbel-softmax relaxation of it is not used). Minibatch Adam (a seeded
    permutation per epoch), ``W`` projected on ``W >= 0`` after each step, float64
    state, in the C core; same bits for any thread count.

    Parameters
    ----------
    n_classes : int
        K >= 2; labels are integers in [0, K).
    parametrization : {"cayley", "exp"}
    steps : int, default 1000
        Adam steps.
    batch_size : int, default 64
    lr : float, default 0.01
    seed : int, default 0
        Seeds the head's initialisation and the batch order.
    n_threads : int or None
        Threads of the C core.

    Attributes
    ----------
    rotation_ : ndarray (d, d)
        U; its columns are the learned channels (:meth:`iis.ConceptLibrary.from_infodisent`).
    coef_ : ndarray (K, d), non-negative
    intercept_ : ndarray (K,)
    loss_history_ : ndarray (steps,)
        Minibatch loss before each step.
    """

    def __init__(self, n_classes: int, parametrization: str = "cayley", *, steps: int = 1000,
                 batch_size: int = 64, lr: float = 0.01, seed: int = 0,
                 n_threads: Optional[int] = None) -> None:
        self.n_classes = _check_int(n_classes, "n_classes", 2)
        if parametrization not in _PARAMS:
            raise ValueError(f"parametrization must be one of {_PARAMS}, got {parametrization!r}")
        self.parametrization = parametrization
        self.steps = _check_int(steps, "steps", 0)
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (0 < lr < np.inf):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        self.lr = float(lr)
        self.seed = _check_int(seed, "seed", 0)
        self.n_threads = check_threads(n_threads)

    # ------------------------------------------------------------------ fitting
    def _labels(self, labels: Any, n: int) -> np.ndarray:
        y = np.asarray(labels)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"labels must be 1-D with one entry per image ({n}), got shape {y.shape}")
        if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
            raise TypeError(f"labels must be integers in [0, {self.n_classes}), got dtype {y.dtype}")
        if y.size and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"labels must lie in [0, n_classes={self.n_classes}), got {y.min()}..{y.max()}")
        return y.astype(np.int32)

    def fit(self, maps: Any, labels: Any) -> "InfoDisent":
        """Train on spatial maps ``(n, H*W, d)`` (float16/32/64; used as float32) and integer labels."""
        m = _check_maps(maps)
        y = self._labels(labels, m.shape[0])
        if np.unique(y).size < 2:
            raise ValueError(f"labels hold a single class ({int(y[0])}); InfoDisent needs at least 2")
        d, K = m.shape[2], self.n_classes
        x = np.zeros((d, d))
        w = np.random.default_rng(self.seed).uniform(0.0, 1.0 / np.sqrt(d), (K, d))
        b = np.zeros(K)
        adam = np.zeros(2 * (d * d + K * d + K))
        with single_blas():
            hist = _core.infodisent_fit(m, y, K, x, w, b, adam, parametrization=self.parametrization,
                                        steps=self.steps, step0=0, batch=self.batch_size, lr=self.lr,
                                        beta1=_BETA1, beta2=_BETA2, eps=_EPS, seed=self.seed,
                                        n_threads=self.n_threads)
            self.rotation_ = _core.infodisent_rotation(x, parametrization=self.parametrization,
                                                       n_threads=self.n_threads)
        self.coef_, self.intercept_, self.loss_history_ = w, b, hist
        return self

    def _fitted(self) -> None:
        if not hasattr(self, "rotation_"):
            raise RuntimeError("this InfoDisent is not fitted yet; call fit(maps, labels) first")

    # --------------------------------------------------------------- prediction
    def _pool(self, maps: Any):
        self._fitted()
        m = _check_maps(maps, self.rotation_.shape[0])
        with single_blas():
            v, pmax, pmin = _core.infodisent_pool(m, self.rotation_, n_threads=self.n_threads)
        return m, v, pmax, pmin

    def transform(self, maps: Any) -> np.ndarray:
        """Pooled signed maxima ``v`` (n, d) of ``z = F U``."""
        return self._pool(maps)[1]

    def decision_function(self, maps: Any) -> np.ndarray:
        """Logits ``W v + b`` (n, K)."""
        return self.transform(maps) @ self.coef_.T + self.intercept_

    def predict_proba(self, maps: Any) -> np.ndarray:
        z = self.decision_function(maps)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, maps: Any) -> np.ndarray:
        return np.argmax(self.decision_function(maps), axis=1)

    def score(self, maps: Any, labels: Any) -> float:
        """Top-1 accuracy."""
        pred = self.predict(maps)
        return float(np.mean(pred == self._labels(labels, pred.shape[0])))

    def explain(self, maps: Any, top: int = 3, grid: Optional[Sequence[int]] = None) -> List[InfoDisentExplanation]:
        """One :class:`InfoDisentExplanation` per image: the ``top`` channels with the largest
        contribution ``W[y, c] v_c`` to the predicted class ``y``, where each fires and its
        heat map over the ``grid`` (H, W) (default: square, H = W = sqrt(H*W))."""
        m, v, pmax, pmin = self._pool(maps)
        hw, d = m.shape[1], m.shape[2]
        top = min(_check_int(top, "top", 1), d)
        if grid is None:
            side = int(round(np.sqrt(hw)))
            if side * side != hw:
                raise ValueError(f"the maps have {hw} positions, not a square grid; pass grid=(H, W)")
            grid = (side, side)
        gh, gw = (int(g) for g in grid)
        if gh * gw != hw:
            raise ValueError(f"grid {grid} has {gh * gw} positions but the maps have {hw}")
        logits = v @ self.coef_.T + self.intercept_
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob /= prob.sum(axis=1, keepdims=True)
        out = []
        for i in range(m.shape[0]):
            k = int(np.argmax(logits[i]))
            contrib = self.coef_[k] * v[i]
            ch = np.argsort(-contrib, kind="stable")[:top]
            z = m[i].astype(np.float64) @ self.rotation_[:, ch]  # (hw, top)
            sign = np.where(v[i, ch] < 0, -1.0, 1.0)
            pos = np.where(v[i, ch] > 0, pmax[i, ch], np.where(v[i, ch] < 0, pmin[i, ch], -1))
            rc = np.array([divmod(int(p), gw) if p >= 0 else (-1, -1) for p in pos], dtype=np.int64)
            out.append(InfoDisentExplanation(
                sample=i, predicted=k, probability=float(prob[i, k]), channels=ch, value=v[i, ch],
                weight=self.coef_[k, ch], contribution=contrib[ch], position=rc,
                heatmap=(z * sign).T.reshape(top, gh, gw)))
        return out

    def __repr__(self) -> str:
        return (f"InfoDisent(n_classes={self.n_classes}, parametrization={self.parametrization!r}, "
                f"steps={self.steps}, batch_size={self.batch_size}, lr={self.lr}, seed={self.seed})")
