"""Sparse concept heads: iis.sparse_path against glm-saga and scikit-learn saga.

All three solve the same problem on W1's layernorm concept activations along the same
lambda grid (log-spaced from lambda_max to ratio * lambda_max, largest first, each warm-started
from the previous point):

    mean CE(A W + b, y) + lambda (alpha ||W||_1 + (1 - alpha)/2 ||W||_F^2),  alpha = 0.99.

- iis:     iis.sparse_path, stopping rule max KKT violation <= tol (default 1e-4).
- glm-saga (MadryLab, PyPI ``glm_saga``), CPU, torch on the same thread count, the settings
  Label-free CBM publishes: batch 256, step 0.1, alpha 0.99, tol 1e-4 (its default), at most
  ``--glm-epochs`` epochs per lambda (LF-CBM: 1000); called one lambda at a time as LF-CBM
  calls it (k=1, epsilon=1, max_reg given), passing its SAGA state along the path.
- sklearn: LogisticRegression(solver="saga", l1_ratio=alpha, C=1/(n lambda), warm_start=True,
  tol=1e-4), single-threaded (scikit-learn's saga has no threads).

Each opponent runs the grid until its time budget is spent (the points it reached are
reported; no extrapolation). Every point's train objective is recomputed here in float64
from its (W, b), eval accuracy on the eval split, nonzeros counted exactly (W != 0).
Equal nonzeros: for each budget B of nonzero weights, each solver's point with the most
nonzeros <= B, and the time its path took to get there.

    python benchmarks/sparse_path.py [--quick] [--n-lambdas 20] [--threads 2] [--budget 400]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import workloads  # noqa: E402


def objective(a, y, w, b, lam, alpha):
    """float64 train objective of (w (M, K), b) at lambda."""
    z = a @ w + b
    z -= z.max(axis=1, keepdims=True)
    ce = float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))
    return ce + lam * (alpha * np.abs(w).sum() + 0.5 * (1 - alpha) * (w * w).sum())


def accuracy(a, y, w, b):
    return float(np.mean(np.argmax(a @ w + b, axis=1) == y))


def point(a, y, aev, yev, w, b, lam, alpha, t):
    return {"lambda": float(lam), "nonzeros": int((w != 0).sum()), "objective": objective(a, y, w, b, lam, alpha),
            "eval_accuracy": accuracy(aev, yev, w, b), "seconds": float(t)}


def run_iis(a, y, aev, yev, lams, alpha, tol, threads):
    import iis

    t0 = time.perf_counter()
    p = iis.sparse_path(a, y, lambdas=lams, alpha=alpha, tol=tol, n_threads=threads)
    total = time.perf_counter() - t0
    cum = np.cumsum(p.seconds)
    pts = [point(a.astype(np.float64), y, aev, yev, p.coef(i), p.intercepts[i], lams[i], alpha, cum[i])
           for i in range(len(p))]
    return {"total_seconds": total, "points": pts, "max_kkt": float(p.kkt.max()),
            "iterations": int(p.n_iter.sum())}


def run_glm_saga(a, y, aev, yev, lams, alpha, threads, epochs, budget):
    import torch
    from glm_saga.elasticnet import IndexedTensorDataset, glm_saga

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    n, M = a.shape
    K = int(y.max()) + 1
    loader = torch.utils.data.DataLoader(IndexedTensorDataset(torch.from_numpy(a), torch.from_numpy(y.astype(np.int64))),
                                         batch_size=256, shuffle=True)
    lin = torch.nn.Linear(M, K)
    lin.weight.data.zero_()
    lin.bias.data.zero_()
    state, pts, t_all = None, [], 0.0

    def stop(signum, frame):
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, stop)
    try:
        for lam in lams:
            meta = {"max_reg": {"nongrouped": float(lam) * alpha}}
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, max(budget - t_all, 1.0))  # a lambda can run 1000 epochs
            try:
                with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = glm_saga(lin, loader, 0.1, epochs, alpha, epsilon=1, k=1, do_zero=False, metadata=meta,
                                   n_ex=n, n_classes=K, state=state)
            except TimeoutError:
                t_all += time.perf_counter() - t0  # the unfinished lambda is not reported
                break
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            t_all += time.perf_counter() - t0
            state = out["state"]
            w = lin.weight.detach().numpy().astype(np.float64).T.copy()
            b = lin.bias.detach().numpy().astype(np.float64).copy()
            pts.append(point(a.astype(np.float64), y, aev, yev, w, b, lam, alpha, t_all))
            if t_all > budget:
                break
    finally:
        signal.signal(signal.SIGALRM, old)
    return {"total_seconds": t_all, "points": pts, "completed": len(pts) == len(lams)}


def run_sklearn(a, y, aev, yev, lams, alpha, budget, tol=1e-4, max_iter=100):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    n = a.shape[0]
    a64 = a.astype(np.float64)
    clf = LogisticRegression(solver="saga", l1_ratio=alpha, C=1.0, tol=tol, max_iter=max_iter, warm_start=True)
    pts, t_all, unconverged = [], 0.0, 0
    for lam in lams:
        clf.set_params(C=1.0 / (n * float(lam)))
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            clf.fit(a64, y)
        t_all += time.perf_counter() - t0
        unconverged += any(issubclass(r.category, ConvergenceWarning) for r in rec)
        pts.append(point(a64, y, aev, yev, clf.coef_.T.copy(), clf.intercept_.copy(), lam, alpha, t_all))
        if t_all > budget:
            break
    return {"total_seconds": t_all, "points": pts, "completed": len(pts) == len(lams),
            "max_iter_per_lambda": max_iter, "points_at_max_iter": int(unconverged)}


def at_budget(points, B):
    """the point with the most nonzeros <= B (None if none)"""
    ok = [p for p in points if p["nonzeros"] <= B]
    return max(ok, key=lambda p: (p["nonzeros"], -p["lambda"])) if ok else None


def table(res, budgets):
    """per budget: each solver's point, or 'not reached' when its path stopped (time budget)
    before a point with more nonzeros than the budget"""
    names = [k for k in ("iis", "glm_saga", "sklearn") if k in res]
    head = "| nonzeros <= | " + " | ".join(f"{k} acc | {k} s" for k in names) + " | glm-saga s / iis s |"
    lines = [head, "|" + "---|" * (2 * len(names) + 2)]
    for B in budgets:
        cells, t = [], {}
        for k in names:
            p = at_budget(res[k]["points"], B)
            top = max((q["nonzeros"] for q in res[k]["points"]), default=-1)
            if p is not None and top <= B and not res[k].get("completed", True):
                p = None  # the path stopped before reaching this budget
            cells.append("not reached" if p is None else f"{p['eval_accuracy']:.4f} ({p['nonzeros']})")
            cells.append("-" if p is None else f"{p['seconds']:.1f}")
            t[k] = p
        ratio = (f"{t['glm_saga']['seconds'] / max(t['iis']['seconds'], 1e-9):.1f}x"
                 if t.get("glm_saga") and t.get("iis") else "-")
        lines.append(f"| {B} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def same_lambda(res):
    """objective, eval accuracy and the path's seconds of every solver at each lambda all of
    them reached, and glm-saga's seconds over iis's"""
    names = [k for k in ("iis", "glm_saga", "sklearn") if k in res]
    n = min(len(res[k]["points"]) for k in names)
    lines = ["| lambda | " + " | ".join(f"{k} objective | {k} nonzeros | {k} eval acc | {k} s" for k in names)
             + " | glm-saga s / iis s |", "|" + "---|" * (4 * len(names) + 2)]
    for i in range(n):
        cells = []
        for k in names:
            p = res[k]["points"][i]
            cells += [f"{p['objective']:.5f}", str(p["nonzeros"]), f"{p['eval_accuracy']:.4f}", f"{p['seconds']:.1f}"]
        ratio = (f"{res['glm_saga']['points'][i]['seconds'] / max(res['iis']['points'][i]['seconds'], 1e-9):.1f}x"
                 if "glm_saga" in res else "-")
        lines.append(f"| {res['iis']['points'][i]['lambda']:.4g} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def render(res):
    """the Markdown tables of a result (also: --render a saved JSON)"""
    m = res["meta"]
    shape = (m["workload"]["n_train"], m["workload"]["n_concepts"], m["workload"]["n_classes"])
    budgets = [B for B in (10, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
               if B <= shape[1] * shape[2]]
    return (f"## W1: {shape[0]} x {shape[1]} activations, {shape[2]} classes, {m['n_lambdas']} lambdas "
            f"(ratio {m['ratio']}), alpha {m['alpha']}, tol {m['tol']}, {m['threads']} threads, "
            f"opponents' budget {m['budget_s']:.0f} s, load average {m['load_average'][0]:.1f}\n\n"
            "Accuracy at equal nonzeros (eval accuracy (nonzeros) and the path's seconds to reach it):\n\n"
            + table(res, budgets) + "\n\nAt the same lambdas:\n\n" + same_lambda(res) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="W1 at its quick size (3,000 x 40 concepts, 20 classes)")
    ap.add_argument("--n-lambdas", type=int, default=20)
    ap.add_argument("--ratio", type=float, default=1e-3, help="lambda_min / lambda_max (glm-saga's epsilon)")
    ap.add_argument("--alpha", type=float, default=0.99)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--glm-epochs", type=int, default=1000)
    ap.add_argument("--budget", type=float, default=400.0, help="seconds per opponent path")
    ap.add_argument("--skip", nargs="*", default=[], choices=["glm_saga", "sklearn"])
    ap.add_argument("--out", default=str(HERE / "results" / "sparse_path"))
    ap.add_argument("--render", help="print the tables of a saved JSON result and exit")
    args = ap.parse_args(argv)
    if args.render:
        print(render(json.load(open(args.render))))
        return

    import iis
    from iis._validation import single_blas

    wl = workloads.w1(quick=args.quick)
    lib = iis.ConceptLibrary(wl.concepts)
    a = iis.project(wl.train_features, lib, normalize="layernorm", n_threads=args.threads)
    aev = iis.project(wl.eval_features, lib, normalize="layernorm", n_threads=args.threads).astype(np.float64)
    y, yev = wl.train_labels.astype(np.int32), wl.eval_labels.astype(np.int32)
    p0 = iis.sparse_path(a, y, n_lambdas=1, alpha=args.alpha, tol=args.tol, n_threads=args.threads)
    lams = p0.lambda_max * np.logspace(0, np.log10(args.ratio), args.n_lambdas)
    res = {"meta": {"workload": wl.describe(), "n_lambdas": args.n_lambdas, "ratio": args.ratio,
                    "alpha": args.alpha, "tol": args.tol, "threads": args.threads,
                    "glm_epochs": args.glm_epochs, "budget_s": args.budget, "cpu": os.cpu_count(),
                    "load_average": os.getloadavg()}}
    print(f"W1{' quick' if args.quick else ''}: activations {a.shape}, {args.n_lambdas} lambdas", flush=True)
    suffix = "-quick" if args.quick else ""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def save():  # after each solver, so that a stopped run keeps what it measured
        with open(args.out + suffix + ".json", "w") as fh:
            json.dump(res, fh, indent=1)

    with single_blas():
        res["iis"] = run_iis(a, y, aev, yev, lams, args.alpha, args.tol, args.threads)
    res["iis"]["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"iis: {res['iis']['total_seconds']:.1f} s, peak RSS so far {res['iis']['peak_rss_mib']:.0f} MiB", flush=True)
    save()
    if "glm_saga" not in args.skip:
        res["glm_saga"] = run_glm_saga(a, y, aev, yev, lams, args.alpha, args.threads, args.glm_epochs, args.budget)
        print(f"glm-saga: {res['glm_saga']['total_seconds']:.1f} s, {len(res['glm_saga']['points'])} points", flush=True)
        save()
    if "sklearn" not in args.skip:
        res["sklearn"] = run_sklearn(a, y, aev, yev, lams, args.alpha, args.budget)
        print(f"sklearn: {res['sklearn']['total_seconds']:.1f} s, {len(res['sklearn']['points'])} points", flush=True)
    save()
    text = render(res)
    print(text)
    with open(args.out + suffix + ".md", "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
