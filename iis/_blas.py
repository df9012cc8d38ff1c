"""Fill the C core's BLAS table from SciPy's bundled OpenBLAS (scikit-learn's way)."""
from __future__ import annotations

from scipy.linalg import cython_blas

from . import _core


def install() -> None:
    capi = cython_blas.__pyx_capi__
    _core._set_blas(capi["sgemm"], capi["dgemm"])
