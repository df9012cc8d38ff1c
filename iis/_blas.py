"""The C core's backend: the BLAS table (from SciPy's bundled OpenBLAS, scikit-learn's
way) and the kernel choice passed to every ``_core`` call."""
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


def kernels() -> str:
    """The ``kernels=`` of the core, from the environment variable ``IIS_KERNELS`` read at
    each call: ``auto`` (the default: built-in kernels where the CPU has them) or ``blas``
    (every GEMM through the BLAS, no hardware-specific kernel)."""
    value = os.environ.get("IIS_KERNELS", "auto").strip().lower() or "auto"
    if value not in ("auto", "blas"):
        raise ValueError(f"environment variable IIS_KERNELS must be 'auto' or 'blas', got {value!r}")
    return value
