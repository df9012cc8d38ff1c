"""End2End concept library (docs/method.md section 6): concepts learned jointly with the IP.

Every element is assigned to one of M concepts by learned logits (straight-through hard
Gumbel-softmax); concept m is the unit sum of its elements; a linear head on the
layer-normalised, top-k masked activations is trained with them by cross-entropy.
Training runs in the C core (``csrc/end2end.c``); this module validates, splits,
initialises, early-stops on a hold-out part of train and builds the library.
"""
from __future__ import annotations

import numbers
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

from . import _core
from ._validation import as_float_matrix, check_threads, encode_labels, single_blas

# Adam as torch.optim.Adam's defaults
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


def _check_int(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _check_real(value: Any, name: str, lo: float, hi: float, lo_open: bool = True) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and value < hi
    if not ok:
        br = "(" if lo_open else "["
        raise ValueError(f"{name} must lie in {br}{lo}, {hi}), got {value!r}")
    return float(value)


def assignment_concepts(elements: np.ndarray, assign: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """``(concepts, used)``: unit(sum of the elements assigned to each concept) for the
    concepts that have elements (``used``, ascending)."""
    order = np.argsort(assign, kind="stable")
    used, start = np.unique(assign[order], return_index=True)
    sums = np.add.reduceat(np.asarray(elements, dtype=np.float64)[order], start, axis=0)
    norms = np.linalg.norm(sums, axis=1)
    keep = norms > 0
    return sums[keep] / norms[keep, None], used[keep]


def _heldout(el: np.ndarray, q: np.ndarray, w: np.ndarray, b: np.ndarray, f: np.ndarray, y: np.ndarray,
             k: int) -> tuple[float, float]:
    """(accuracy, cross-entropy) of the deterministic model (arg-max assignment, no noise) on (f, y)."""
    p, used = assignment_concepts(el, np.argmax(q, axis=1), q.shape[1])
    a = np.zeros((f.shape[0], q.shape[1]))
    a[:, used] = f @ p.T
    x = (a - a.mean(axis=1, keepdims=True)) / np.sqrt(a.var(axis=1, keepdims=True) + 1e-5)
    drop = np.argpartition(-np.abs(x), k - 1, axis=1)[:, k:]
    np.put_along_axis(x, drop, 0.0, axis=1)
    z = x @ w.T + b
    z -= z.max(axis=1, keepdims=True)
    ce = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))
    return float(np.mean(np.argmax(z, axis=1) == y)), ce


def end2end_library(elements: Any, train_features: Any, train_labels: Any, *, n_concepts: int = 200,
                    temperature: float = 0.1, sparsity: float = 0.5, steps: int = 2000,
                    lr: float = 0.05, l2: float = 1e-4, holdout: float = 0.1, eval_every: int = 50,
                    patience: int = 10, seed: int = 0, element_names: Optional[Sequence[str]] = None,
                    n_threads: Optional[int] = None, progress: bool = False):
    """The vectors, names and meta of an End2End library; :meth:`iis.ConceptLibrary.end2end`
    builds the library from them."""
    el = np.ascontiguousarray(as_float_matrix(elements, "elements"), dtype=np.float64)
    f = np.ascontiguousarray(as_float_matrix(train_features, "train_features"), dtype=np.float64)
    if el.shape[1] != f.shape[1]:
        raise ValueError(f"elements have dimension {el.shape[1]} but train_features have {f.shape[1]}: "
                         "embed the elements with the same model and layer as the features")
    classes, y, _ = encode_labels(train_labels)
    if y.shape[0] != f.shape[0]:
        raise ValueError(f"train_labels has {y.shape[0]} entries for {f.shape[0]} feature rows")
    if classes.size < 2:
        raise ValueError(f"train_labels hold a single class ({classes[0]!r}); End2End trains a classifier "
                         "and needs at least 2 classes")
    n_el, m = el.shape[0], _check_int(n_concepts, "n_concepts", 1)
    if m > n_el:
        raise ValueError(f"n_concepts={m} exceeds the {n_el} elements: every concept needs an element")
    if element_names is not None:
        element_names = [str(s) for s in element_names]
        if len(element_names) != n_el:
            raise ValueError(f"element_names has {len(element_names)} entries for {n_el} elements")
    temperature = _check_real(temperature, "temperature", 0.0, np.inf)
    sparsity = _check_real(sparsity, "sparsity", 0.0, 1.0, lo_open=False)
    k = _core.keep_count(m, sparsity, 0)
    if k < 1:
        raise ValueError(f"sparsity={sparsity} keeps no concept of {m}")
    lr = _check_real(lr, "lr", 0.0, np.inf)
    l2 = _check_real(l2, "l2", 0.0, np.inf, lo_open=False)
    holdout = _check_real(holdout, "holdout", 0.0, 1.0)
    steps = _check_int(steps, "steps", 0)
    eval_every = _check_int(eval_every, "eval_every", 1)
    patience = _check_int(patience, "patience", 1)
    seed = _check_int(seed, "seed", 0)
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    nt = check_threads(n_threads)
    n, n_classes = f.shape[0], int(classes.size)
    n_va = max(2, int(round(holdout * n)))
    if n - n_va < 2:
        raise ValueError(f"train_features has {n} rows: too few to hold out {n_va} for early stopping "
                         "and still learn from at least 2")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    va, tr = np.sort(perm[:n_va]), np.sort(perm[n_va:])
    f_tr, y_tr, f_va, y_va = f[tr], y[tr], f[va], y[va]
    if np.unique(y_tr).size < 2:
        raise ValueError("the train part left after the hold-out holds a single class")
    # q ~ N(0, 1) (LN makes its scale irrelevant); W ~ U(-1/sqrt(M), 1/sqrt(M)) as nn.Linear
    q = rng.standard_normal((n_el, m))
    w = rng.uniform(-1.0, 1.0, (n_classes, m)) / np.sqrt(m)
    b = np.zeros(n_classes)
    adam = np.zeros(2 * (q.size + w.size + b.size))
    common = dict(k=k, temperature=temperature, n_threads=nt)

    t0 = time.perf_counter()
    with single_blas():  # the core splits its GEMMs over its own threads
        score = _heldout(el, q, w, b, f_va, y_va, k)
        best = (score, 0, q.copy(), w.copy(), b.copy())
        history, val_history, val_steps, bad, done = [], [score], [0], 0, 0
        while done < steps and bad < patience:
            chunk = min(eval_every, steps - done)
            history.extend(_core.e2e_fit(el, f_tr, y_tr, n_classes, q, w, b, adam, l2=l2, steps=chunk,
                                         step0=done, lr=lr, beta1=_BETA1, beta2=_BETA2, eps=_EPS,
                                         seed=seed, **common).tolist())
            done += chunk
            if progress:
                sys.stderr.write(f"\r[iis] end2end library: step {done}/{steps} {time.perf_counter() - t0:.1f}s")
                sys.stderr.flush()
            score = _heldout(el, q, w, b, f_va, y_va, k)
            val_history.append(score)
            val_steps.append(done)
            if (score[0], -score[1]) > (best[0][0], -best[0][1]):  # accuracy first, then cross-entropy
                best, bad = (score, done, q.copy(), w.copy(), b.copy()), 0
            else:
                bad += 1
    if progress:
        sys.stderr.write("\n")
    fit_time = time.perf_counter() - t0
    q = best[2]
    assign = np.argmax(q, axis=1)  # LN(q) keeps the order of each row: the arg-max of q
    vectors, used = assignment_concepts(el, assign, m)
    names = []
    for c in used:
        members = np.flatnonzero(assign == c)
        shown = [element_names[j] for j in members[:5]] if element_names else [str(j) for j in members[:5]]
        more = f" +{members.size - 5} more" if members.size > 5 else ""
        names.append(f"end2end_{c}: elements {', '.join(shown)}{more}")
    meta = {
        "assignment": assign.tolist(),
        "sizes": np.bincount(assign, minlength=m)[used].tolist(),
        "concept_index": used.tolist(),
        "n_empty": int(m - used.size),
        "k": int(k),
        "sparsity": sparsity,
        "temperature": temperature,
        "seed": seed,
        "train_loss": history,
        "heldout_accuracy": [v[0] for v in val_history],
        "heldout_loss": [v[1] for v in val_history],
        "heldout_steps": val_steps,
        "best_step": int(best[1]),
        "best_heldout_accuracy": best[0][0],
        "best_heldout_loss": best[0][1],
        "n_steps": int(done),
        "classes": classes.tolist(),
        "fit_seconds": fit_time,
    }
    return vectors, names, meta
