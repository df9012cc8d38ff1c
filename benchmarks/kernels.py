"""Kernel on/off: iis.score's time with the hardware-specific kernels (IIS_KERNELS=auto)
and without them (IIS_KERNELS=blas), on the same workload in the same process.

    python benchmarks/kernels.py                 # W1 (50,000 x 768, M = 200, K = 100)
    python benchmarks/kernels.py --quick --rounds 5

Rounds alternate auto and blas so that both sample the same minutes of the machine; the
best time of each is kept (noise only ever adds). "auto" switches on what this CPU has
(csrc/internal.h, "dispatch points"): the AVX-512 softmax rows of the solver, and the AMX
solver passes where the CPU has AMX-BF16. A kernel earns its place when switching it off
costs at least 10% of iis.score's time on some workload.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="W1 at small sizes")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (each times auto and blas once)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import iis
    import workloads as W
    from iis._config import config

    wl = W.w1(quick=args.quick)
    lib = iis.ConceptLibrary(wl.concepts)
    best, res = {"auto": float("inf"), "blas": float("inf")}, {}
    for _ in range(args.rounds):
        for k in ("auto", "blas"):
            os.environ["IIS_KERNELS"] = k
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = time.perf_counter()
                res[k] = iis.score(wl.train_features, wl.train_labels, wl.eval_features, wl.eval_labels, lib,
                                   n_threads=args.threads)
                best[k] = min(best[k], time.perf_counter() - t)
    os.environ["IIS_KERNELS"] = "auto"
    c = config()
    print(f"workload {wl.name}{' (quick)' if args.quick else ''}: n_train {wl.n_train}, n_eval {wl.n_eval}, "
          f"d {wl.d}, M {wl.n_concepts}, K {wl.n_classes}; threads {args.threads or os.cpu_count()}")
    print(f"CPU SIMD {c['cpu_simd']}, AMX-BF16 {c['cpu_amx']}; auto runs the solver's passes on "
          f"{c['solver_f32']}")
    print(f"{'kernels':<8} {'iis.score s':>12} {'IIS':>8}")
    for k in ("auto", "blas"):
        print(f"{k:<8} {best[k]:>12.3f} {res[k].iis:>8.4f}")
    cost = best["blas"] / best["auto"] - 1.0
    print(f"switching the kernels off costs {100 * cost:+.1f}% of iis.score's time "
          f"({'>= 10%: they earn their place' if cost >= 0.10 else 'below 10%'}); |dIIS| = "
          f"{abs(res['auto'].iis - res['blas'].iis):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
