"""Build the C core ``iis._core`` (C11, -O3, OpenMP).

The core reaches BLAS through function pointers that ``iis`` fills at import
time from ``scipy.linalg.cython_blas`` (scikit-learn's approach), so nothing
links a BLAS here and ``pip install .`` works wherever SciPy's wheels do.

Environment switches:
  IIS_SANITIZE=1   build with AddressSanitizer + UndefinedBehaviorSanitizer
                   (run Python with LD_PRELOAD of libasan, see .ci/run)
  IIS_NO_OPENMP=1  build without OpenMP (single-threaded kernels)
  IIS_NATIVE=1     add -march=native (faster on the build machine, not portable)
"""
import os
import sys

import numpy as np
from setuptools import Extension, setup

sources = [
    "csrc/module.c",
    "csrc/project.c",
    "csrc/mask.c",
    "csrc/solver.c",
    "csrc/kmeans.c",
    "csrc/curve.c",
    "csrc/text.c",
    "csrc/simd.c",
    "csrc/amx.c",
    "csrc/end2end.c",
    "csrc/infodisent.c",
    "csrc/sparse.c",
]
compile_args = ["-std=c11", "-O3", "-Wall", "-Wextra", "-Wno-unused-parameter"]
link_args = []
if os.environ.get("IIS_NO_OPENMP") != "1" and sys.platform != "win32":
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")
if os.environ.get("IIS_NATIVE") == "1":
    compile_args.append("-march=native")
if os.environ.get("IIS_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
    compile_args = [a for a in compile_args if a != "-O3"] + san
    link_args += ["-fsanitize=address,undefined"]

setup(
    ext_modules=[
        Extension(
            "iis._core",
            sources=sources,
            include_dirs=["csrc", np.get_include()],
            depends=["csrc/iis.h", "csrc/internal.h", "csrc/gemm_t.h", "csrc/project_t.h", "csrc/mask_t.h",
                     "csrc/passes_t.h", "csrc/amx_passes_t.h", "csrc/precond_t.h", "csrc/blocks_t.h",
                     "csrc/lbfgs_t.h", "csrc/path_t.h", "csrc/kmeans_t.h",
                     "csrc/text_t.h"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
    ]
)
