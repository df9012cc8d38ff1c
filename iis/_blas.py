"""Fill the C core's BLAS table from SciPy's bundled OpenBLAS (scikit-learn's way)."""
from __future__ import annotations

import os

from scipy.linalg import cython_blas, cython_lapack

from . import _core


def install() -> None:
    blas = cython_blas.__pyx_capi__
    lapack = cython_lapack.__pyx_capi__
    # gemm for every pass; syrk, trsm and potrf for the solver's preconditioner
    _core._set_blas(blas["sgemm"], blas["dgemm"], blas["ssyrk"], blas["dsyrk"], blas["dtrsm"],
                    lapack["dpotrf"])
    # gesv for InfoDisent's Cayley map
    _core._set_lapack(lapack["dgesv"], lapack["sgesv"])


def apply_kernels_env() -> None:
    """``IIS_KERNELS=blas`` runs every GEMM through the BLAS (no built-in SIMD kernel);
    ``auto`` (the default) uses the built-in AVX-512 kernel where the CPU has it."""
    value = os.environ.get("IIS_KERNELS", "auto").strip().lower() or "auto"
    if value not in ("auto", "blas"):
        raise ValueError(f"environment variable IIS_KERNELS must be 'auto' or 'blas', got {value!r}")
    _core.set_kernels(value)
