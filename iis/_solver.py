"""The C solver for a dense multinomial logistic regression, called in one place."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core
from ._validation import check_threads, single_blas


def fit_logreg(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, tol: float, max_iter: int,
               n_threads: Optional[int] = None) -> tuple[Any, Any, int, bool]:
    """Minimise ``mean_i CE(x_i W + b, y_i) + l2/2 ||W||^2`` from zero (METHOD.md section 4).

    ``x`` is a C-contiguous (n, d) float32/float64 array, ``y`` int32 classes in
    [0, n_classes). Returns ``W`` (d, n_classes), ``b`` (n_classes,) in ``x``'s dtype,
    the iteration count, and whether max|grad| <= tol was reached.
    """
    w0 = np.zeros((x.shape[1], n_classes), dtype=x.dtype)
    b0 = np.zeros(n_classes, dtype=x.dtype)
    with single_blas():
        w, b, n_iter, conv, _, _ = _core.logreg_fit(x, None, None, 0, y, n_classes, float(l2), float(tol),
                                                    int(max_iter), w0, b0, None, None,
                                                    check_threads(n_threads))
    return w, b, int(n_iter), bool(conv)
