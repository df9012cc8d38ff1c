"""The public pipeline: projection, sparsity path, probe, ARR and IIS."""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from . import _core
from ._blas import kernels
from ._library import NORMALIZATIONS, ConceptLibrary, warn_if_layernorm_at_chance
from ._validation import (MAX_ABS, as_float_matrix, check_finite_rows, check_option, check_positive,
                          check_sparsities, check_threads, encode_labels, json_text, single_blas)

DEFAULT_GRID = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98)
_NORM_CODE = {"none": 0, "layernorm": 1, "standardize": 2}

# The probe starts from the first IP's train logits (n_train x K) when they cost at most
# this many bytes or a quarter of the train features, whichever is larger: on W1 they
# take the probe from 60 to 42 L-BFGS iterations, and the cap keeps ImageNet-sized
# n_train x K (1.28M x 1000: 5 GB) out of the memory peak.
_WARM_START_MAX_BYTES = 64 << 20

# A probe on more train rows than _WARM_ROWS starts from the probe fitted on every
# _WARM_STEP-th row (_probe_fit); docs/method.md gives the passes this saves.
_WARM_ROWS = 1 << 17
_WARM_STEP = 8

# Significance level of the chance test of the probe (see score's docstring).
CHANCE_LEVEL = 0.01


#: why the solver stopped (the core's enum iis_stop, in order)
STOP_REASONS = ("converged", "max_iter", "line_search", "relative_decrease", "non_finite")


def convergence_message(what: str, reason: str, tol: float, max_iter: int) -> str:
    """The ConvergenceWarning text for a fit of ``what`` that stopped for ``reason``."""
    why = {
        "max_iter": f"it took max_iter={max_iter} iterations; raise max_iter",
        "line_search": "the line search found no decrease at this floating-point precision; use "
                       "float64 features or a larger tol",
        "relative_decrease": "the objective's relative decrease stayed below this floating-point "
                             "precision's floor; use float64 features or a larger tol",
        "non_finite": "the objective or its gradient is not finite; check the scale of the features",
    }[reason]
    return f"{what} stopped before max|grad| <= tol={tol} ({reason}): {why}"


class ConvergenceWarning(UserWarning):
    """The solver stopped at ``max_iter`` before reaching ``tol``."""


@dataclass
class IISResult:
    """Outcome of :func:`iis.score`.

    Attributes
    ----------
    iis : float
        Trapezoid integral of ARR over the sorted grid (docs/method.md section 5).
    iis_normalized : float
        ``iis / (s_max - s_min)``.
    sparsities, arr, ip_accuracy, kept : arrays over the grid
        Ratios s, accuracy retention ``acc_IP(s) / acc_probe``, top-1 eval
        accuracy of the interpretable predictor, concepts kept per sample k(s).
    probe_accuracy : float
        Top-1 eval accuracy of the dense probe on standardised features.
    probe_above_chance : bool
        False when the probe is not clearly above chance on the eval split
        (``probe_p_value >= CHANCE_LEVEL``, see :func:`score`): ARR and IIS are
        then meaningless, and ``repr`` says so.
    chance_accuracy, probe_p_value : float
        The chance rate (eval frequency of the most frequent class) and the
        one-sided binomial p-value of the probe's eval hits against it.
    n_iter, converged, stop_reason : per ratio; probe_n_iter, probe_converged, probe_stop_reason
        Solver iterations; ``converged`` is True exactly when max |grad| <= tol; the stop
        reason is one of :data:`STOP_REASONS` (``"converged"`` or why the solver stopped
        short of tol).
    """

    iis: float
    iis_normalized: float
    sparsities: np.ndarray
    arr: np.ndarray
    ip_accuracy: np.ndarray
    probe_accuracy: float
    probe_above_chance: bool
    chance_accuracy: float
    probe_p_value: float
    kept: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    probe_n_iter: int
    probe_converged: bool
    stop_reason: List[str]
    probe_stop_reason: str
    n_concepts: int
    n_classes: int
    n_train: int
    n_eval: int
    normalize: str
    mask: str
    keep: str
    l2: float
    library_kind: str
    timings: Dict[str, float] = field(default_factory=dict)
    concept_names: List[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        """Plain-Python dictionary (lists and floats), JSON-serialisable."""
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, (np.floating, np.integer, np.bool_)):
                v = v.item()
            out[k] = v
        return out

    def summary(self) -> Dict[str, Any]:
        """The headline numbers as plain floats and lists (for logs and histories)."""
        return {"iis": float(self.iis), "iis_normalized": float(self.iis_normalized),
                "probe_accuracy": float(self.probe_accuracy),
                "probe_above_chance": bool(self.probe_above_chance),
                "sparsities": [float(v) for v in self.sparsities],
                "arr": [float(v) for v in self.arr],
                "ip_accuracy": [float(v) for v in self.ip_accuracy]}

    def to_json(self, path: Optional[str] = None, indent: int = 2) -> str:
        """JSON text of :meth:`to_dict`; also written to ``path`` when given."""
        return json_text(self.to_dict(), path, indent)

    def __repr__(self) -> str:
        rows = "\n".join(
            f"  s={s:<5.3g} k={k:<5d} acc_IP={a:.4f}  ARR={r:.4f}"
            for s, k, a, r in zip(self.sparsities, self.kept, self.ip_accuracy, self.arr))
        return (f"IISResult(iis={self.iis:.4f}, iis_normalized={self.iis_normalized:.4f}, "
                f"probe_accuracy={self.probe_accuracy:.4f}, M={self.n_concepts}, K={self.n_classes}, "
                f"normalize={self.normalize!r}, mask={self.mask!r}, keep={self.keep!r})\n{rows}"
                + ("" if self.probe_above_chance else "\n  WARNING: " + self.chance_text()))

    def chance_text(self) -> str:
        """The warning given when the probe is not clearly above chance."""
        return (f"the probe is not clearly above chance on the eval split (accuracy "
                f"{self.probe_accuracy:.4f} against {self.chance_accuracy:.4f}, one-sided binomial "
                f"p = {self.probe_p_value:.2g} >= {CHANCE_LEVEL} over n_eval = {self.n_eval}): ARR and "
                "IIS are not meaningful")

    def plot(self, ax: Any = None, label: Optional[str] = None, fill: bool = True, **kwargs: Any) -> Any:
        """Plot the ARR curve (matplotlib); returns the axes. ``fill`` shades the
        integral (turn it off when overlaying several curves)."""
        try:
            import matplotlib.pyplot as plt
        except ImportError:  # pragma: no cover - exercised only without matplotlib
            raise ImportError("IISResult.plot needs matplotlib: pip install matplotlib") from None
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        lab = label or f"IIS={self.iis:.3f} (probe acc {self.probe_accuracy:.3f})"
        ax.plot(self.sparsities, self.arr, marker="o", label=lab, **kwargs)
        if fill:
            ax.fill_between(self.sparsities, 0, self.arr, alpha=0.12)
        ax.set_xlabel("sparsity ratio s")
        ax.set_ylabel("ARR(s) = acc_IP(s) / acc_probe")
        ax.set_ylim(0, max(1.05, float(np.nanmax(self.arr)) + 0.05))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
        return ax


def _resolve_library(library: Any, d: int, dtype: Any) -> ConceptLibrary:
    if not isinstance(library, ConceptLibrary):
        library = ConceptLibrary(library)
    if library.dim != d:
        raise ValueError(f"features have d={d} but the concept library has d={library.dim}")
    return library


def project(features: Any, library: Any, normalize: Optional[str] = None, *,
            stats: Optional[tuple] = None, n_threads: Optional[int] = None) -> np.ndarray:
    """Concept activations ``norm(F @ unit(P).T)`` (docs/method.md section 2).

    Parameters
    ----------
    features : array-like (N, d)
    library : ConceptLibrary or array (M, d)
    normalize : {"layernorm", "standardize", "none"} or None (library default)
    stats : (mean, std), optional
        Per-concept statistics for ``"standardize"``; computed from
        ``features`` themselves when omitted (pass the train statistics when
        projecting an evaluation split).
    """
    f = as_float_matrix(features, "features", check_finite=False)  # checked by the kernel
    lib = _resolve_library(library, f.shape[1], f.dtype)
    norm = check_option(normalize or lib.default_normalize, "normalize", NORMALIZATIONS)
    nt = check_threads(n_threads)
    if stats is not None and norm == "standardize":
        stats = _check_stats(stats, lib.n_concepts)
    with single_blas():
        return _project(f, lib._unit(f.dtype), norm, stats, nt)


def _check_stats(stats: Any, m: int) -> tuple:
    """(mean, std) of M finite entries each, std > 0 (a zero std would divide by zero)."""
    try:
        mean, std = stats
        mean, std = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (mean, std))
    except (TypeError, ValueError):
        raise TypeError("stats must be a pair (mean, std) of arrays, as iis.activation_stats returns") from None
    if mean.shape != (m,) or std.shape != (m,):
        raise ValueError(f"stats have {mean.size} means and {std.size} stds for {m} concepts")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError("stats must be finite with std > 0")
    return mean, std


def _project(f: np.ndarray, unit_p: np.ndarray, norm: str, stats: Optional[tuple], nt: int,
             name: str = "features"):
    """Activations of ``f``, which was taken with ``check_finite=False``: the kernel
    reports max |f| over the tiles it reads (in cache), so the finiteness check of
    ``as_float_matrix`` costs no separate pass over the features."""
    if norm != "standardize":
        return _checked(_core.project(f, unit_p, norm=_NORM_CODE[norm], n_threads=nt, check=True,
                                     kernels=kernels()), f, name)
    if stats is None:
        a = _checked(_core.project(f, unit_p, n_threads=nt, check=True, kernels=kernels()), f, name)
        mean, std = _core.colstats(a, n_threads=nt)
        a -= mean
        a /= std
        return a
    mean, std = (np.ascontiguousarray(s, dtype=f.dtype).reshape(-1) for s in stats)
    return _checked(_core.project(f, unit_p, norm=2, mean=mean, std=std, n_threads=nt, check=True,
                                 kernels=kernels()), f, name)


def _checked(result: tuple, f: np.ndarray, name: str) -> np.ndarray:
    """The activations, after the input check on the max |f| the kernel measured."""
    a, absmax = result
    if not absmax <= MAX_ABS:  # also NaN
        check_finite_rows(f, name)  # raises, naming the first bad row
        raise ValueError(f"{name} contains NaN, Inf or entries above {MAX_ABS:.0e}")
    return a


def activation_stats(features: Any, library: Any, n_threads: Optional[int] = None) -> tuple:
    """Per-concept (mean, std) of raw activations ``F @ unit(P).T`` (train statistics)."""
    f = as_float_matrix(features, "features", check_finite=False)  # checked by the kernel
    lib = _resolve_library(library, f.shape[1], f.dtype)
    nt = check_threads(n_threads)
    with single_blas():
        a = _checked(_core.project(f, lib._unit(f.dtype), n_threads=nt, check=True, kernels=kernels()), f,
                     "features")
        return _core.colstats(a, n_threads=nt)


@dataclass(frozen=True)
class ProgressEvent:
    """One step of :func:`score`'s fits, as its ``progress`` callable receives it.

    The fits run in this order: each ratio of the grid (ascending), then the probe.
    Each sends ``"start"``, then ``"iteration"`` after every L-BFGS iteration (one full
    pass over its data, or a few), then ``"end"``. A probe on more than 131,072 train
    rows first fits every 8th row (every 64th before that, and so on) as its start:
    those iterations come as ``"warm"`` events, between ``"start"`` and the first
    ``"iteration"``, each fit's counted from 1.

    Attributes
    ----------
    stage : {"ratio", "probe"}
    event : {"start", "warm", "iteration", "end"}
    index : int
        Position of the ratio in the sorted grid (the probe: the grid's length).
    n_ratios : int
        Length of the grid.
    sparsity : float or None
        The ratio s (None for the probe).
    kept : int or None
        Concepts kept per sample, k(s) (None for the probe).
    iteration : int
        L-BFGS iterations taken so far in this fit (0 at ``"start"``; the ``"warm"``
        fits count their own).
    loss, grad_max : float
        Objective and max |gradient| at the current iterate (NaN at ``"start"``).
    accuracy : float or None
        Top-1 eval accuracy of the fitted predictor (``"end"`` only).
    stop_reason : str or None
        Why the solver stopped, one of :data:`STOP_REASONS` (``"end"`` only).
    """

    stage: str
    event: str
    index: int
    n_ratios: int
    sparsity: Optional[float]
    kept: Optional[int]
    iteration: int
    loss: float
    grad_max: float
    accuracy: Optional[float] = None
    stop_reason: Optional[str] = None


_EVENTS = ("iteration", "start", "end")  # the core's enum iis_event_kind, in order


class _ProgressPrinter:
    """``progress=True``: compact lines on stderr, an iteration line at most every
    ``every`` seconds, one line per finished fit and one when the probe (the longest
    fit, after the path) starts; with ``throttle_ends``, those too only where ``every``
    seconds have passed."""

    def __init__(self, prefix: str = "[iis]", every: float = 2.0, throttle_ends: bool = False) -> None:
        self.prefix, self.every, self.throttle_ends = prefix, every, throttle_ends
        self.t0 = self.last = time.perf_counter()

    def __call__(self, e: ProgressEvent) -> None:
        now = time.perf_counter()
        throttled = e.event in ("iteration", "warm") or self.throttle_ends
        if (e.event == "start" and e.stage == "ratio") or (throttled and now - self.last < self.every):
            return
        self.last = now
        where = "probe" if e.stage == "probe" else f"s={e.sparsity:.3g} ({e.index + 1}/{e.n_ratios})"
        if e.event == "start":
            what = "start"
        elif e.event == "warm":
            what = f"start from a subsample: it {e.iteration}  f={e.loss:.6g}  |g|={e.grad_max:.2e}"
        elif e.event == "iteration":
            what = f"it {e.iteration}  f={e.loss:.6g}  |g|={e.grad_max:.2e}"
        else:
            what = f"done: accuracy {e.accuracy:.4f}, {e.iteration} iterations ({e.stop_reason})"
        sys.stderr.write(f"{self.prefix} {where}  {what}  {now - self.t0:.1f}s\n")
        sys.stderr.flush()


def _progress_callable(progress: Any) -> Optional[Callable[[ProgressEvent], Any]]:
    """score's ``progress`` argument as a callable of ProgressEvent (None: silent)."""
    if progress is None or progress is False or progress is np.False_:
        return None
    if progress is True or progress is np.True_:
        return _ProgressPrinter()
    if not callable(progress):
        raise TypeError(f"progress must be None, True, False or a callable (of a ProgressEvent), got {progress!r}")
    return progress


def _rescaled(report: Callable[[ProgressEvent], Any], scale: float) -> Callable[[ProgressEvent], Any]:
    return lambda e: report(e if e.accuracy is None else replace(e, accuracy=e.accuracy * scale))


def _ratio_trace(report: Optional[Callable[[ProgressEvent], Any]], s: np.ndarray):
    """The core path's trace callable (see module.c) sending ProgressEvents to ``report``."""
    if report is None:
        return None
    n, k = len(s), [0]

    def trace(kind, i, it, loss, gmax, kept, stop, acc):
        ev = _EVENTS[kind]
        if ev == "start":  # the iteration events leave k out
            k[0], loss, gmax = kept, float("nan"), float("nan")
        report(ProgressEvent("ratio", ev, i, n, float(s[i]), k[0], it, loss, gmax, acc if ev == "end" else None,
                             STOP_REASONS[stop] if ev == "end" else None))

    return trace


def score(train_features: Any, train_labels: Any, eval_features: Any, eval_labels: Any,
          library: Any, *, sparsities: Sequence[float] = DEFAULT_GRID,
          normalize: Optional[str] = None, mask: str = "hard", keep: str = "default",
          l2: float = 1e-4, tol: float = 1e-5, max_iter: int = 1000,
          n_threads: Optional[int] = None, progress: Any = None,
          probe: Optional["ProbeResult"] = None) -> IISResult:
    """Inherent Interpretability Score of a representation (docs/method.md).

    Parameters
    ----------
    train_features, eval_features : array-like (N, d), float32 or float64
        Representation features (NumPy arrays, memmaps or CPU torch tensors;
        used without copying when rows are contiguous and the dtype matches).
    train_labels, eval_labels : array-like (N,)
        Class labels: integers, strings, bools or integral floats (floats with a
        fractional part are refused as continuous targets). Eval labels are
        matched to the train classes by value, never cast to the train dtype.
        Eval rows of a class absent from train can never be predicted: they
        count as errors of the IP and of the probe alike (so ARR and the IIS are
        those without them) and a UserWarning names them; a ValueError when no
        eval label is a train class.
    library : ConceptLibrary or array (M, d)
        Concept library ``P``.
    sparsities : sequence of float in [0, 1)
        Grid of ratios s (sorted and deduplicated); default
        ``(0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98)``.
    normalize : {"layernorm", "standardize", "none"} or None
        Normalisation of activations; None takes ``library.default_normalize``
        (``"layernorm"`` for visual libraries).
    mask : {"hard", "soft"}
        Hard top-k mask (published code) or soft threshold (Eq. 4).
    keep : {"default", "published"}
        ``k(s) = M - floor(M s)``, or one fewer as the published code does.
        A ratio where that keeps no concept (k = 0) gets the bias-only
        predictor (the train class priors: it predicts the most frequent
        train class), as the published code does; :class:`InterpretablePredictor`
        fits the same model.
    l2 : float
        L2 penalty: objective ``mean CE + l2/2 ||W||^2`` (bias unpenalised).
        The same penalty is used for the probe.
    tol, max_iter : float, int
        L-BFGS stops when ``max |grad| <= tol`` (or the relative decrease of
        the objective stays below machine precision for three iterations in a
        row), at most ``max_iter``.
        On dense designs (the probe, and ratios keeping more than a quarter of
        the concepts) it is preconditioned by the design's Gram matrix and,
        where they fit in memory and each class has at least 2 (d + 1) rows on
        average, from the third iteration on by the per-class blocks of the
        Hessian; both change the path to the optimum, not the optimum.
    n_threads : int or None
        Threads for the C kernels and BLAS (None = all cores, -1 = all,
        -2 = all but one ...).
    progress : None, bool or callable
        None or False (default): silent. True: compact lines on stderr, one per
        fitted ratio and for the probe, with its accuracy and iterations, one
        when the probe starts, and while a fit runs, its iteration, objective
        and max |gradient| at most every 2 s. A callable receives a :class:`ProgressEvent` at the start
        of each fit, after each of its L-BFGS iterations and at its end; an
        exception it raises stops the call and propagates. Progress never
        changes the result.
    probe : ProbeResult or None
        The dense probe of these features, as :func:`probe` returned it: used
        in place of fitting one (``timings["probe"]`` is then about 0), so that
        libraries scored on the same representation share one probe and divide
        by the very same accuracy. It must have been fitted on splits of the
        same sizes, classes, dimension and dtype with the same ``l2``, ``tol``
        and ``max_iter`` (a ValueError names the field that differs). None
        (default): fit the probe here, started from the first ratio's train
        logits (the optimum is the same, within ``tol``).

    Returns
    -------
    IISResult

    Notes
    -----
    ARR is a ratio of accuracies, meaningless when the probe itself is at chance
    (random labels give an IIS near 1). The probe counts as clearly above chance
    when a one-sided binomial test rejects, at level ``CHANCE_LEVEL`` = 0.01, that
    its eval hits come from Binomial(n_eval, p0), where p0 is the eval frequency
    of the most frequent class: the highest expected accuracy of any predictor
    that ignores the features. Otherwise the result is marked
    (``probe_above_chance=False``, shown in ``repr`` and the JSON) and a
    UserWarning is given. The test depends on n_eval: on a small eval split a
    probe must beat chance by a wider margin.
    """
    t_all = time.perf_counter()
    # finiteness is checked by the projection kernels, on tiles already in cache
    ftr, fev, classes, ytr, yev, n_eval = _inputs(train_features, train_labels, eval_features, eval_labels)
    lib = _resolve_library(library, ftr.shape[1], ftr.dtype)
    s = check_sparsities(sparsities)
    norm = check_option(normalize if normalize is not None else lib.default_normalize, "normalize",
                        NORMALIZATIONS)
    check_option(mask, "mask", ("hard", "soft"))
    check_option(keep, "keep", ("default", "published"))
    l2, tol, max_iter = _solver_options(l2, tol, max_iter)
    if probe is not None:
        _check_probe(probe, ftr, classes, n_eval, l2, tol, max_iter)
    nt = check_threads(n_threads)
    report = _report(progress, yev.shape[0], n_eval)
    K = len(classes)
    timings: Dict[str, float] = {}

    with single_blas():
        t0 = time.perf_counter()
        unit_p = lib._unit(ftr.dtype)
        if norm == "layernorm":
            warn_if_layernorm_at_chance(ftr, unit_p, "train_features")
        if norm == "standardize":
            atr = _checked(_core.project(ftr, unit_p, n_threads=nt, check=True, kernels=kernels()), ftr,
                           "train_features")
            stats = _core.colstats(atr, n_threads=nt)
            atr -= stats[0]
            atr /= stats[1]
            aev = _project(fev, unit_p, norm, stats, nt, "eval_features")
        else:
            atr = _project(ftr, unit_p, norm, None, nt, "train_features")
            aev = _project(fev, unit_p, norm, None, nt, "eval_features")
        timings["project"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        # atr and aev are this call's own: hard masks may be applied to them in place
        # the probe starts from the least-squares fit of the first IP's train logits
        logits0 = None
        if probe is None and ftr.shape[0] * K * atr.itemsize <= max(_WARM_START_MAX_BYTES, ftr.nbytes // 4):
            logits0 = np.empty((ftr.shape[0], K), dtype=atr.dtype)
        acc, kept, n_iter, conv, stop = _core.path(
            atr, ytr, aev, yev, n_classes=K, sparsities=s, soft=mask == "soft", published=keep == "published",
            l2=float(l2), tol=float(tol), max_iter=max_iter, n_threads=nt,
            progress=_ratio_trace(report, s), overwrite=True, precondition=1,
            train_logits0=logits0, kernels=kernels())
        timings["path"] = time.perf_counter() - t0
        del atr, aev

        t0 = time.perf_counter()
        if probe is None:
            probe_acc, p_iter, p_conv, p_stop = _probe(
                ftr, ytr, fev, yev, K, l2, tol, max_iter, nt,
                None if logits0 is None else logits0.astype(ftr.dtype, copy=False), report, len(s))
        else:  # the accuracy over the seen eval rows, as _probe measures it: hits / rows
            probe_acc, p_iter, p_conv, p_stop = (probe.hits / yev.shape[0], probe.n_iter, probe.converged,
                                                 STOP_REASONS.index(probe.stop_reason))
        del logits0
        timings["probe"] = time.perf_counter() - t0

    reasons = [STOP_REASONS[c] for c in stop]
    for reason in STOP_REASONS[1:]:
        at = [float(x) for x, r in zip(s, reasons) if r == reason]
        if at:
            warnings.warn(convergence_message(f"the interpretable predictor at s={at}", reason, tol, max_iter),
                          ConvergenceWarning, stacklevel=2)
    if STOP_REASONS[p_stop] != "converged":
        warnings.warn(convergence_message("the probe", STOP_REASONS[p_stop], tol, max_iter),
                      ConvergenceWarning, stacklevel=2)
    if probe_acc == 0.0:
        warnings.warn("the probe's accuracy is 0: ARR is undefined (NaN)", RuntimeWarning, stacklevel=2)
        arr = np.full_like(acc, np.nan)
    else:
        arr = acc / probe_acc
    hits = int(round(probe_acc * yev.shape[0]))
    if yev.shape[0] < n_eval:  # the accuracies over all eval rows, unseen classes as errors
        acc, probe_acc = acc * (yev.shape[0] / n_eval), _all_rows(probe_acc, yev.shape[0], n_eval)
    chance, p_value = _chance_test(hits, n_eval, int(np.bincount(yev).max()))
    total = float(_core.trapezoid(s, arr=np.ascontiguousarray(arr)))
    timings["total"] = time.perf_counter() - t_all
    result = IISResult(
        iis=total, iis_normalized=total / float(s[-1] - s[0]), sparsities=s, arr=arr,
        ip_accuracy=acc, probe_accuracy=float(probe_acc), probe_above_chance=p_value < CHANCE_LEVEL,
        chance_accuracy=chance, probe_p_value=p_value, kept=kept.astype(np.int64),
        n_iter=n_iter.astype(np.int64), converged=conv.astype(bool), probe_n_iter=int(p_iter),
        probe_converged=bool(p_conv), stop_reason=reasons, probe_stop_reason=STOP_REASONS[p_stop],
        n_concepts=lib.n_concepts, n_classes=K,
        n_train=int(ftr.shape[0]), n_eval=int(n_eval), normalize=norm, mask=mask, keep=keep,
        l2=float(l2), library_kind=lib.kind, timings=timings, concept_names=list(lib.names))
    if not result.probe_above_chance:
        warnings.warn(result.chance_text(), UserWarning, stacklevel=2)
    return result


def _inputs(train_features: Any, train_labels: Any, eval_features: Any, eval_labels: Any) -> tuple:
    """(ftr, fev, classes, ytr, yev, n_eval) of score's and probe's arguments, checked: the
    features in one dtype (the narrower split promoted), the labels as codes of the
    sorted train classes, and the eval rows of unseen classes left out (warned; n_eval
    counts them). Finiteness is checked later by the kernels, on tiles already in cache."""
    ftr = as_float_matrix(train_features, "train_features", check_finite=False)
    fev = as_float_matrix(eval_features, "eval_features", check_finite=False)
    if ftr.shape[1] != fev.shape[1]:
        raise ValueError(f"train_features have d={ftr.shape[1]} but eval_features have d={fev.shape[1]}")
    if ftr.dtype != fev.dtype:  # promote the narrower split (explicitly requested by the caller)
        dt = np.result_type(ftr.dtype, fev.dtype)
        ftr, fev = ftr.astype(dt, copy=False), fev.astype(dt, copy=False)
    classes, ytr, (yev,) = encode_labels(train_labels, [eval_labels], ["eval_labels"], stacklevel=5)
    if ytr.shape[0] != ftr.shape[0]:
        raise ValueError(f"train_labels has {ytr.shape[0]} entries but train_features has {ftr.shape[0]} rows")
    if yev.shape[0] != fev.shape[0]:
        raise ValueError(f"eval_labels has {yev.shape[0]} entries but eval_features has {fev.shape[0]} rows")
    n_eval = yev.shape[0]
    if np.any(yev < 0):  # unseen classes (warned): errors for the IP and the probe alike
        fev, yev = fev[yev >= 0], yev[yev >= 0]
    if len(classes) < 2:
        raise ValueError(f"train_labels hold {len(classes)} class; IIS needs at least 2")
    return ftr, fev, classes, ytr, yev, n_eval


def _solver_options(l2: Any, tol: Any, max_iter: Any) -> tuple:
    """(l2, tol, max_iter) checked, as the core takes them (it counts iterations in a C int)."""
    check_positive(l2, "l2", strict=False)
    check_positive(tol, "tol")
    check_positive(max_iter, "max_iter", integer=True)
    return float(l2), float(tol), min(int(max_iter), 2**31 - 1)


def _report(progress: Any, n_seen: int, n_eval: int) -> Optional[Callable[[ProgressEvent], Any]]:
    """The progress callable, its accuracies over all eval rows (as in the results)."""
    report = _progress_callable(progress)
    return report if report is None or n_seen == n_eval else _rescaled(report, n_seen / n_eval)


def _all_rows(acc: float, n_seen: int, n_eval: int) -> float:
    """An accuracy over the seen eval rows as one over all of them, unseen classes as errors."""
    return acc if n_seen == n_eval else acc * n_seen / n_eval


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of :func:`probe`: the dense probe of a representation, to share between
    the :func:`score` calls of several libraries on it (``score(..., probe=...)``).

    Attributes
    ----------
    accuracy : float
        Top-1 accuracy over all eval rows (rows of classes absent from train
        count as errors), as :attr:`IISResult.probe_accuracy`.
    hits : int
        Eval rows predicted right.
    n_iter : int
        L-BFGS iterations.
    converged : bool
        True exactly when max |grad| <= tol.
    stop_reason : str
        One of :data:`STOP_REASONS`.
    n_train, n_eval, dim : int
        Rows of the splits (all eval rows) and feature dimension it was fitted on.
    classes : tuple
        The sorted train classes (Python values).
    dtype : str
        The features' dtype (``"float32"`` or ``"float64"``).
    l2, tol : float
    max_iter : int
        The solver options it was fitted with.
    """

    accuracy: float
    hits: int
    n_iter: int
    converged: bool
    stop_reason: str
    n_train: int
    n_eval: int
    classes: tuple
    dim: int
    dtype: str
    l2: float
    tol: float
    max_iter: int


def probe(train_features: Any, train_labels: Any, eval_features: Any, eval_labels: Any, *,
          l2: float = 1e-4, tol: float = 1e-5, max_iter: int = 1000, n_threads: Optional[int] = None,
          progress: Any = None) -> ProbeResult:
    """The dense probe of a representation: what :func:`score` divides by, fitted once.

    Multinomial logistic regression (``mean CE + l2/2 ||W||^2``, bias unpenalised)
    on the features standardised with train statistics, by the solver of
    :func:`score`, started from zero (on more than 131,072 train rows, from the
    probe fitted on every 8th row): the result depends on the features, labels
    and solver options only, never on a concept library. Pass it to every
    :func:`score` call on the same features (``score(..., probe=p)``) to fit it
    once instead of once per library.

    Parameters
    ----------
    train_features, eval_features : array-like (N, d), float32 or float64
    train_labels, eval_labels : array-like (N,)
        As in :func:`score` (eval rows of classes absent from train count as errors).
    l2, tol, max_iter : float, float, int
        As in :func:`score`; a :func:`score` call given this probe must use the same.
    n_threads : int or None
        As in :func:`score`.
    progress : None, bool or callable
        As in :func:`score`: the probe's ``"probe"`` events (``index`` and
        ``n_ratios`` are 0).

    Returns
    -------
    ProbeResult
    """
    ftr, fev, classes, ytr, yev, n_eval = _inputs(train_features, train_labels, eval_features, eval_labels)
    check_finite_rows(ftr, "train_features")  # no projection pass checks them here
    check_finite_rows(fev, "eval_features")
    l2, tol, max_iter = _solver_options(l2, tol, max_iter)
    nt = check_threads(n_threads)
    report = _report(progress, yev.shape[0], n_eval)
    with single_blas():
        acc, n_iter, conv, stop = _probe(ftr, ytr, fev, yev, len(classes), l2, tol, max_iter, nt, None, report, 0)
    if STOP_REASONS[stop] != "converged":
        warnings.warn(convergence_message("the probe", STOP_REASONS[stop], tol, max_iter), ConvergenceWarning,
                      stacklevel=2)
    return ProbeResult(accuracy=float(_all_rows(acc, yev.shape[0], n_eval)), hits=int(round(acc * yev.shape[0])),
                       n_iter=int(n_iter), converged=bool(conv), stop_reason=STOP_REASONS[stop],
                       **_fitted_on(ftr, classes, n_eval, l2, tol, max_iter))


def _fitted_on(ftr: np.ndarray, classes: np.ndarray, n_eval: int, l2: float, tol: float,
               max_iter: int) -> Dict[str, Any]:
    """The ProbeResult fields that say what a probe is fitted on (what score checks)."""
    return {"n_train": int(ftr.shape[0]), "n_eval": int(n_eval), "classes": tuple(classes.tolist()),
            "dim": int(ftr.shape[1]), "dtype": ftr.dtype.name, "l2": l2, "tol": tol, "max_iter": max_iter}


def _check_probe(p: Any, ftr: np.ndarray, classes: np.ndarray, n_eval: int, l2: float, tol: float,
                 max_iter: int) -> None:
    """ValueError naming the first field in which probe ``p`` differs from this call."""
    if not isinstance(p, ProbeResult):
        raise TypeError(f"probe must be a ProbeResult (from iis.probe) or None, got {type(p).__name__}")
    for name, value in _fitted_on(ftr, classes, n_eval, l2, tol, max_iter).items():
        if getattr(p, name) != value:
            got = getattr(p, name)
            if name == "classes":
                value, got = f"{len(value)} classes {list(value)[:5]}", f"{len(got)} classes {list(got)[:5]}"
            raise ValueError(f"the probe was fitted with {name} = {got} but this call has {name} = {value}; "
                             "fit it on these features with these options (iis.probe)")


def _chance_test(hits: int, n: int, majority: int) -> tuple:
    """(p0, P(X >= hits)) for X ~ Binomial(n, p0), p0 = majority / n: the chance rate
    (always predicting the most frequent class) and the one-sided p-value of the
    probe's hits against it (P(X >= h) = I_p0(h, n - h + 1), the regularised beta)."""
    from scipy.special import betainc

    p0 = majority / n
    return p0, float(betainc(hits, n - hits + 1, p0)) if hits > 0 else 1.0


def _probe(ftr, ytr, fev, yev, K, l2, tol, max_iter, nt, start_logits=None, report=None, n_ratios=0):
    """Dense probe: the same solver on features standardised with train statistics
    (applied implicitly inside the kernel, so the features are not copied). Its eval
    accuracy, iterations, converged flag and stop code. ``report`` receives its
    ProgressEvents."""
    def event(ev, it, loss, gmax, acc=None, stop=None):
        report(ProgressEvent("probe", ev, n_ratios, n_ratios, None, None, it, loss, gmax, acc, stop))

    if report is not None:
        event("start", 0, float("nan"), float("nan"))
    w, b, mu, sigma, n_iter, conv, loss, gmax, stop = _probe_fit(
        ftr, ytr, K, l2, tol, max_iter, nt, start_logits, None if report is None else event)
    _, pred = _core.logreg_predict(fev, w=w, b=b, mu=mu, sigma=sigma, n_threads=nt, kernels=kernels())
    acc = float(_core.accuracy(pred, yev))
    if report is not None:
        event("end", n_iter, loss, gmax, acc, STOP_REASONS[stop])
    return acc, n_iter, conv, stop


def _probe_fit(x, y, K, l2, tol, max_iter, nt, start_logits=None, event=None, stats=None):
    """The probe's weights on standardised features, and the solver's report:
    ``(w, b, mu, sigma, n_iter, converged, loss, grad_max, stop)``.

    It starts from the least-squares fit of start_logits (n_train x K) when given;
    otherwise, on more than _WARM_ROWS rows, from the probe fitted (the same way) on
    every _WARM_STEP-th row, a view: memory-mapped features are not copied, and a
    class-sorted file gives each class its share; with neither, from zero. The optimum
    is unique and the stopping rule is the full fit's: a start only saves passes. The
    start is fitted to the same tol: on 320,000 x 2048 features (K = 1,000) a start
    fitted to 10 tol left the full fit 22 iterations, one fitted to tol 13, and none 19.
    ``stats``: the full data's (mu, sigma) when this is the fit of such a start (its
    iterations are then "warm" events); None computes them from x."""
    mu, sigma = _core.colstats(x, n_threads=nt) if stats is None else stats
    w0 = b0 = None
    if start_logits is None and x.shape[0] > _WARM_ROWS:
        w0, b0 = _probe_fit(x[::_WARM_STEP], np.ascontiguousarray(y[::_WARM_STEP]), K, l2, tol, max_iter, nt,
                            event=event, stats=(mu, sigma))[:2]
    kind = "iteration" if stats is None else "warm"
    trace = None if event is None else lambda _kind, _i, it, loss, gmax, *_: event(kind, it, loss, gmax)
    w, b, n_iter, conv, loss, gmax, stop = _core.logreg_fit(
        x, y=y, n_classes=K, l2=l2, tol=tol, max_iter=max_iter, w0=w0, b0=b0, mu=mu, sigma=sigma,
        n_threads=nt, precondition=1, start_logits=start_logits, kernels=kernels(), progress=trace)
    return w, b, mu, sigma, n_iter, conv, loss, gmax, stop
