"""Text concept library: the Label-free CBM recipe (docs/method.md section 6).

The user brings the concept strings and CLIP embeddings from a model of their
choice (see :func:`iis.torch.clip_embeddings`); this module filters the
concepts, learns the projection ``W_c`` (concepts x d) in the C core by
maximising the cos^3 similarity with ``T = unit(img) @ unit(txt).T``, keeps the
interpretable concepts and returns a :class:`~iis.ConceptLibrary` whose rows
are the learned directions.
"""
from __future__ import annotations

import numbers
import sys
import time
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

from . import _core
from ._blas import kernels
from ._validation import as_float_matrix, blas_limit, blas_threads, check_positive, check_threads

# Adam as torch.optim.Adam's defaults (LF-CBM uses lr=1e-3)
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


def check_concepts(concepts: Any, name: str = "concepts") -> List[str]:
    """A list of distinct, non-empty concept strings."""
    if isinstance(concepts, (str, bytes)) or concepts is None:
        raise TypeError(f"{name} must be a sequence of strings (one per concept), got "
                        f"{type(concepts).__name__}; use iis.load_concepts(path) for a file")
    try:
        items = list(concepts)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of strings, got {type(concepts).__name__}") from None
    out = []
    for i, c in enumerate(items):
        if isinstance(c, np.str_):
            c = str(c)
        if not isinstance(c, str):
            raise TypeError(f"{name}[{i}] is {type(c).__name__}, expected str")
        if not c.strip():
            raise ValueError(f"{name}[{i}] is blank")
        out.append(c)
    if not out:
        raise ValueError(f"{name} is empty")
    seen, dup = set(), []
    for c in out:
        if c in seen and c not in dup:
            dup.append(c)
        seen.add(c)
    if dup:
        raise ValueError(f"{name} contain duplicates {dup[:5]}; iis.load_concepts removes them")
    return out


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    nrm = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(nrm[:, 0] == 0)
    if zero.size:
        raise ValueError(f"{name} has zero-norm rows {zero[:10].tolist()}; a CLIP embedding has a direction")
    return x / nrm


def _check_cutoff(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (-1.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} is a cosine similarity and must lie in [-1, 1], got {value!r}")
    return float(value)


def _check_int(value: Any, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


def top5_similarity(t_img: np.ndarray, t_txt: np.ndarray, top: int = 5,
                    block: Optional[int] = None) -> np.ndarray:
    """Per concept, the mean of the ``top`` largest similarities over the images.

    ``t_img`` and ``t_txt`` are unit-norm rows (float64); T is formed one block
    of concepts at a time (about 64 MB each) so that the full (n x C) matrix is
    never held.
    """
    top = min(top, t_img.shape[0])
    if block is None:
        block = max(1, (8 << 20) // max(1, t_img.shape[0]))
    out = np.empty(t_txt.shape[0])
    for c0 in range(0, t_txt.shape[0], block):
        tb = t_img @ t_txt[c0:c0 + block].T
        part = np.partition(tb, tb.shape[0] - top, axis=0)[tb.shape[0] - top:]
        out[c0:c0 + block] = part.mean(axis=0)
    return out


def _progress_printer(enabled: bool) -> Optional[Callable[[int, int], None]]:
    if not enabled:
        return None
    t0 = time.perf_counter()

    def report(done: int, total: int) -> None:
        if done % 50 and done != total:
            return
        end = "\n" if done == total else ""
        sys.stderr.write(f"\r[iis] text library: step {done}/{total} {time.perf_counter() - t0:.1f}s{end}")
        sys.stderr.flush()

    return report


def text_library(concepts: Sequence[str], train_features: Any, clip_image_features: Any,
                 clip_text_features: Any, *, top5_cutoff: float = 0.25,
                 interpretability_cutoff: float = 0.45, steps: int = 1000, seed: int = 0,
                 holdout: float = 0.1, lr: float = 1e-3, eval_every: int = 50, patience: int = 1,
                 n_threads: Optional[int] = None, progress: bool = False) -> tuple:
    """The vectors, names and meta of a Text concept library (Label-free CBM recipe,
    docs/method.md section 6); :meth:`iis.ConceptLibrary.text` has the parameters.
    """
    names = check_concepts(concepts)
    f = as_float_matrix(train_features, "train_features")
    img = as_float_matrix(clip_image_features, "clip_image_features")
    txt = as_float_matrix(clip_text_features, "clip_text_features")
    n, d = f.shape
    if img.shape[0] != n:
        raise ValueError(f"clip_image_features has {img.shape[0]} rows but train_features has {n}: "
                         "one CLIP image embedding per training image is needed")
    if txt.shape[0] != len(names):
        raise ValueError(f"clip_text_features has {txt.shape[0]} rows for {len(names)} concepts")
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"clip_image_features have dimension {img.shape[1]} but clip_text_features "
                         f"have {txt.shape[1]}: they must come from the same CLIP model")
    top5_cutoff = _check_cutoff(top5_cutoff, "top5_cutoff")
    interpretability_cutoff = _check_cutoff(interpretability_cutoff, "interpretability_cutoff")
    steps = _check_int(steps, "steps", 0)
    eval_every = _check_int(eval_every, "eval_every", 1)
    patience = _check_int(patience, "patience", 1)
    seed = _check_int(seed, "seed", 0)
    check_positive(lr, "lr")
    check_positive(holdout, "holdout")
    if not holdout < 1:
        raise ValueError(f"holdout is the fraction of train held out for early stopping; it must lie "
                         f"in (0, 1), got {holdout!r}")
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    n_va = max(2, int(round(holdout * n)))
    if n - n_va < 2:
        raise ValueError(f"train_features has {n} rows: too few to hold out {n_va} for early stopping "
                         "and still learn from at least 2")
    nt = check_threads(n_threads)
    dtype = f.dtype

    with blas_limit(blas_threads(nt)):
        u_img = _unit_rows(img, "clip_image_features")
        u_txt = _unit_rows(txt, "clip_text_features")
        # 1. drop concepts whose mean top-5 similarity over train <= top5_cutoff
        top5 = top5_similarity(u_img, u_txt)
        cand = np.flatnonzero(top5 > top5_cutoff)
        if cand.size == 0:
            raise ValueError(f"no concept passes top5_cutoff={top5_cutoff}: the largest mean top-5 "
                             f"similarity is {top5.max():.4f} (are the CLIP image and text embeddings "
                             "from the same model?)")
        # 2. targets T = unit(img) unit(txt)^T for the candidates; seeded held-out split
        t = np.ascontiguousarray(u_img @ u_txt[cand].T, dtype=dtype)
        perm = np.random.default_rng(seed).permutation(n)
        va, tr = np.sort(perm[:n_va]), np.sort(perm[n_va:])
        t0 = time.perf_counter()
        w, vsim, th, vh, vs, n_steps, best_step, best_val, n_evals = _core.text_fit(
            f[tr], t[tr], f[va], t[va], n_concepts=int(cand.size), steps=steps, eval_every=eval_every,
            patience=patience, lr=float(lr), beta1=_BETA1, beta2=_BETA2, eps=_EPS, seed=seed, n_threads=nt,
            progress=_progress_printer(bool(progress)), kernels=kernels())
        fit_time = time.perf_counter() - t0
    # 3. keep the concepts whose held-out similarity exceeds the cut-off
    keep = np.flatnonzero(vsim > interpretability_cutoff)
    cand_names = [names[i] for i in cand]
    if keep.size == 0:
        best = int(np.argmax(vsim))
        raise ValueError(f"no concept passes interpretability_cutoff={interpretability_cutoff}: the best "
                         f"held-out cos^3 similarity is {vsim[best]:.4f} ({cand_names[best]!r}) after "
                         f"{n_steps} steps; lower the cut-off or raise steps")
    meta = {
        "seed": seed,
        "top5_cutoff": top5_cutoff,
        "interpretability_cutoff": interpretability_cutoff,
        "top5_similarity": dict(zip(names, top5.tolist())),
        "heldout_similarity": dict(zip(cand_names, vsim.tolist())),
        "dropped_top5": [names[i] for i in np.flatnonzero(top5 <= top5_cutoff)],
        "dropped_interpretability": [cand_names[i] for i in np.flatnonzero(vsim <= interpretability_cutoff)],
        "train_objective": th[:n_steps].tolist(),
        "heldout_objective": vh[:n_evals].tolist(),
        "heldout_steps": vs[:n_evals].tolist(),
        "best_step": int(best_step),
        "best_heldout_objective": float(best_val),
        "n_steps": int(n_steps),
        "n_train": int(tr.size),
        "n_heldout": int(va.size),
        "fit_seconds": fit_time,
    }
    return w[keep], [cand_names[i] for i in keep], meta

