"""``iis sweep --report``: the paper's figures and correlations from a sweep's table."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict

import numpy as np


def correlation(x: Any, y: Any, confidence: float = 0.95) -> Dict[str, float]:
    """Pearson and Spearman correlations of ``x`` and ``y`` with confidence intervals.

    Both intervals come from the Fisher transformation ``z = atanh(r)`` with standard
    error ``1 / sqrt(n - 3)`` for Pearson and ``sqrt(1.06 / (n - 3))`` for Spearman
    (Fieller, Hartley and Pearson, 1957); they are NaN for fewer than 4 points.
    """
    from scipy import stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got shapes {x.shape} and {y.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    n = x.size
    out: Dict[str, float] = {"n": float(n)}
    q = stats.norm.ppf(0.5 + confidence / 2)
    for name, fn, var in (("pearson", stats.pearsonr, 1.0), ("spearman", stats.spearmanr, 1.06)):
        if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            r = p = lo = hi = np.nan
        else:
            r, p = (float(v) for v in fn(x, y)[:2])
            lo = hi = np.nan
            if n > 3:
                with np.errstate(divide="ignore"):
                    z, h = np.arctanh(np.clip(r, -1, 1)), q * np.sqrt(var / (n - 3))
                lo, hi = float(np.tanh(z - h)), float(np.tanh(z + h))
        out.update({f"{name}_r": r, f"{name}_p": p, f"{name}_lo": lo, f"{name}_hi": hi})
    return out


def report(out: str, confidence: float = 0.95):
    """Figures of a sweep's ``results.csv`` in ``out``, written to ``out/figures``.

    ``iis_vs_accuracy.png``: IIS against probe accuracy, one panel per library, with
    Pearson and Spearman correlations and their intervals; ``arr_curves.png``: the ARR
    curve of every cell; ``iis_over_checkpoints.png`` when a model has several
    checkpoints. The correlations are also written to ``correlations.csv``.

    Returns
    -------
    pandas.DataFrame
        One row per library: the output of :func:`correlation`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    csv = os.path.join(out, "results.csv")
    if not os.path.exists(csv):
        raise ValueError(f"{csv} does not exist: run the sweep first")
    df = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    df = df[df["status"] == "ok"].copy()
    for c in ("model", "checkpoint", "layer", "dataset", "library"):
        df[c] = df[c].fillna("").astype(str)  # an empty checkpoint reads back as NaN
    if df.empty:
        raise ValueError(f"{csv} holds no successful cell")
    figs = os.path.join(out, "figures")
    os.makedirs(figs, exist_ok=True)
    libs = list(dict.fromkeys(df["library"]))
    rows = []
    fig, axes = plt.subplots(1, len(libs), figsize=(4.2 * len(libs), 3.8), squeeze=False)
    for ax, lib in zip(axes[0], libs):
        d = df[df["library"] == lib]
        c = correlation(d["probe_accuracy"], d["iis"], confidence)
        rows.append({"library": lib, **c})
        for model, g in d.groupby("model", sort=False):
            ax.scatter(g["probe_accuracy"], g["iis"], label=model, s=22)
            for _, r in g.iterrows():  # which layer, checkpoint and dataset each point is
                ax.annotate(" ".join(r[k] for k in ("checkpoint", "layer", "dataset") if r[k]),
                            (r["probe_accuracy"], r["iis"]), fontsize=5, xytext=(3, 3),
                            textcoords="offset points")
        ax.set_title(f"{lib}\nPearson {c['pearson_r']:.2f} [{c['pearson_lo']:.2f}, {c['pearson_hi']:.2f}], "
                     f"Spearman {c['spearman_r']:.2f} [{c['spearman_lo']:.2f}, {c['spearman_hi']:.2f}]",
                     fontsize=8)
        ax.set_xlabel("probe accuracy")
        ax.set_ylabel("IIS")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    _save(fig, os.path.join(figs, "iis_vs_accuracy.png"))
    arr = sorted((c for c in df.columns if c.startswith("arr@")), key=lambda c: float(c[4:]))
    s = [float(c[4:]) for c in arr]
    fig, axes = plt.subplots(1, len(libs), figsize=(4.2 * len(libs), 3.6), squeeze=False)
    for ax, lib in zip(axes[0], libs):
        for _, r in df[df["library"] == lib].iterrows():
            ax.plot(s, r[arr].to_numpy(dtype=float), marker="o", ms=3,
                    label=" ".join(r[k] for k in ("model", "checkpoint", "layer", "dataset") if r[k]))
        ax.set_title(lib, fontsize=9)
        ax.set_xlabel("sparsity ratio s")
        ax.set_ylabel("ARR(s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5)
    _save(fig, os.path.join(figs, "arr_curves.png"))
    ck = df[df["checkpoint"] != ""]
    if not ck.empty and ck.groupby(["model", "layer", "dataset", "library"])["checkpoint"].nunique().max() > 1:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for key, g in ck.groupby(["model", "layer", "dataset", "library"], sort=False):
            ax.plot(g["checkpoint"], g["iis"], marker="o", label=" ".join(key))
        ax.set_xlabel("checkpoint")
        ax.set_ylabel("IIS")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
        ax.tick_params(axis="x", labelrotation=45, labelsize=6)
        _save(fig, os.path.join(figs, "iis_over_checkpoints.png"))
    table = pd.DataFrame(rows)
    table.to_csv(os.path.join(out, "correlations.csv"), index=False)
    return table


def _save(fig: Any, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ._sweep import load_spec, sweep

    if args.report:
        table = report(load_spec(args.spec)["out"])
        print(table.to_string(index=False))
        return 0
    if args.ray is None:
        df = sweep(args.spec, progress=not args.quiet)
    else:
        df = sweep(args.spec, backend="ray", ray_address=None if args.ray == "local" else args.ray,
                   progress=not args.quiet)
    cols = [c for c in ("model", "checkpoint", "layer", "dataset", "library", "status", "probe_accuracy",
                        "iis", "iis_normalized") if c in df]
    print(df[cols].to_string(index=False))
    failed = int((df["status"] != "ok").sum())
    if failed:
        print(f"iis sweep: {failed} cell(s) failed; their errors are in the 'error' column", file=sys.stderr)
    return 1 if failed else 0


def add_sweep_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``sweep`` subcommand to an ``argparse`` subparsers object."""
    w = subparsers.add_parser("sweep", help="IIS over a grid of models, layers, datasets and libraries",
                              description="Run the sweep a TOML spec describes (docs/sweep.md); a rerun "
                                          "finishes an interrupted sweep.")
    w.add_argument("spec", help="sweep spec (.toml)")
    w.add_argument("--report", action="store_true",
                   help="draw the figures and correlations from the sweep's results instead of running it")
    w.add_argument("--ray", metavar="auto|ADDRESS|local", default=None,
                   help="run the cells on a Ray cluster ('local' starts one on this machine)")
    w.add_argument("--quiet", action="store_true", help="no progress lines")
    w.set_defaults(func=cmd_sweep)
    return w
