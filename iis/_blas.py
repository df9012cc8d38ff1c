"""Fill the C core's BLAS table from SciPy's bundled OpenBLAS (scikit-learn's way)."""
from __future__ import annotations

from scipy.linalg import cython_blas, cython_lapack

from . import _core


def install() -> None:
    blas = cython_blas.__pyx_capi__
    lapack = cython_lapack.__pyx_capi__
    # gemm for every pass; syrk, trsm and potrf for the solver's preconditioner
    _core._set_blas(blas["sgemm"], blas["dgemm"], blas["ssyrk"], blas["dsyrk"], blas["dtrsm"],
                    lapack["dpotrf"])
