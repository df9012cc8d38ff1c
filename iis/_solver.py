"""The C solver for a dense multinomial logistic regression, called in one place."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core
from ._api import STOP_REASONS
from ._blas import kernels
from ._validation import check_threads, single_blas


def fit_logreg(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, tol: float, max_iter: int,
               n_threads: Optional[int] = None) -> tuple[Any, Any, int, bool, str]:
    """Minimise ``mean_i CE(x_i W + b, y_i) + l2/2 ||W||^2`` from zero (docs/method.md section 4).

    ``x`` is a C-contiguous (n, d) float32/float64 array, ``y`` int32 classes in
    [0, n_classes). Returns ``W`` (d, n_classes), ``b`` (n_classes,) in ``x``'s dtype,
    the iteration count, whether max|grad| <= tol was reached, and why the solver
    stopped (one of ``iis.STOP_REASONS``).
    """
    with single_blas():
        w, b, n_iter, conv, _, _, stop = _core.logreg_fit(
            x, y=y, n_classes=n_classes, l2=float(l2), tol=float(tol), max_iter=int(max_iter),
            n_threads=check_threads(n_threads), kernels=kernels())
    return w, b, int(n_iter), bool(conv), STOP_REASONS[stop]
