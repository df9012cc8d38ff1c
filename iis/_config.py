"""``show_config``: the BLAS, OpenMP and thread counts actually in use."""
from __future__ import annotations

import os
import platform
import sys
from typing import Any, Dict

from . import _core
from ._blas import kernels


def config() -> Dict[str, Any]:
    """Facts about this build and the libraries it runs on (a dict)."""
    import numpy
    import scipy
    from threadpoolctl import threadpool_info

    from . import __version__

    core = _core.config(kernels=kernels())  # IIS_KERNELS read now; a wrong value raises here
    blas = [
        {k: info.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer",
                                  "architecture", "filepath")}
        for info in threadpool_info() if info.get("user_api") == "blas"
    ]
    omp = [
        {k: info.get(k) for k in ("internal_api", "version", "num_threads", "filepath")}
        for info in threadpool_info() if info.get("user_api") == "openmp"
    ]
    return {
        "iis": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "cpu_count": os.cpu_count(),
        "core_openmp": core["openmp"],
        "core_omp_max_threads": core["omp_max_threads"],
        "core_blas": ("scipy.linalg.cython_blas/cython_lapack (sgemm/dgemm"
                      + ("/ssyrk/dsyrk/dtrsm/dpotrf" if core.get("precondition_set") else "")
                      + " function pointers)") if core["blas_set"] else "not set",
        "kernels": core["kernels"],
        "cpu_simd": core["cpu_simd"],
        "cpu_amx": core["cpu_amx"],
        "solver_f32": core["solver_f32"],
        "blas_libraries": blas,
        "openmp_libraries": omp,
    }


def show_config() -> None:
    """Print the BLAS library, its threading, OpenMP and thread counts in use."""
    c = config()
    print(f"iis {c['iis']}  (python {c['python']}, {c['platform']})")
    print(f"numpy {c['numpy']}, scipy {c['scipy']}, cpu_count {c['cpu_count']}")
    print(f"C core: OpenMP {c['core_openmp']} (max threads {c['core_omp_max_threads']}); "
          f"BLAS via {c['core_blas']}")
    solver = ("bfloat16 AMX tile passes until the tolerance is met, then precise (split bfloat16, "
              "float32-accurate) AMX passes to the stopping test" if c["solver_f32"] == "amx-bf16"
              else "float32 BLAS passes")
    print(f"float32 solver (dense designs): {solver} (IIS_KERNELS={c['kernels']}, CPU AMX-BF16 usable: "
          f"{c['cpu_amx']}); softmax rows: "
          f"{'AVX-512' if c['cpu_simd'] == 'avx512f' and c['kernels'] == 'auto' else 'portable'}")
    for b in c["blas_libraries"]:
        print(f"BLAS: {b['internal_api']} {b['version']} threads={b['num_threads']} "
              f"layer={b['threading_layer']} arch={b['architecture']}\n      {b['filepath']}")
    for o in c["openmp_libraries"]:
        print(f"OpenMP runtime: {o['internal_api']} {o['version']} threads={o['num_threads']}\n      {o['filepath']}")
