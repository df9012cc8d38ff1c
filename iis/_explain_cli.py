"""``iis explain``: explain the predictions of a saved InterpretablePredictor.

Wired into ``iis/cli.py`` by ``add_explain_parser(subparsers)``.

    iis explain --model predictor.npz --features x.npz --top 5 [--rows 0:10]
                [--plot explain.png] [--json explain.json] [--global]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List

import numpy as np

_MAX_PLOTS = 20


def add_explain_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``explain`` subcommand to an ``argparse`` subparsers object."""
    e = subparsers.add_parser(
        "explain", help="explain predictions of a saved InterpretablePredictor",
        description="Per sample: the predicted class and the kept concepts ranked by their "
                    "contribution W[y, m] * a_m to its logit (docs/method.md section 7).")
    e.add_argument("--model", required=True, help="predictor .npz written by InterpretablePredictor.save")
    e.add_argument("--features", required=True,
                   help=".npz with a 'features' array (N, d), or a .npy array")
    e.add_argument("--key", default=None,
                   help="array name inside the .npz (default: 'features', or the only array)")
    e.add_argument("--top", type=int, default=5, help="concepts listed per sample (default 5)")
    e.add_argument("--rows", default=None,
                   help="rows to explain: START:STOP or a comma list like 0,5,9 (default: all)")
    e.add_argument("--by", choices=["signed", "magnitude"], default="signed",
                   help="rank by signed contribution (default) or by its magnitude")
    e.add_argument("--json", dest="json_out", default=None, help="write the explanations as JSON here")
    e.add_argument("--plot", default=None,
                   help=f"bar chart PNG of the explanation (one file per row, NAME_ROW.png when "
                        f"several; at most {_MAX_PLOTS})")
    e.add_argument("--global", dest="show_global", action="store_true",
                   help="also print the concepts that weigh most for each class")
    e.set_defaults(func=run_explain)
    return e


def _load_features(path: str, key: str | None) -> np.ndarray:
    from ._validation import npz_names, read_npy, read_npz

    if not os.path.exists(path):
        raise ValueError(f"features file {path} does not exist")
    if path.endswith(".npy"):
        return read_npy(path, "features")
    files = npz_names(path, "features")
    if key is None:
        key = "features" if "features" in files else (files[0] if len(files) == 1 else None)
        if key is None:
            raise ValueError(f"features file {path} has arrays {files} and none named "
                             "'features'; choose one with --key")
    if key not in files:
        raise ValueError(f"features file {path} has no array {key!r} (arrays: {files})")
    return read_npz(path, "features", (key,))[key]


def _parse_rows(spec: str | None, n: int) -> np.ndarray:
    if spec is None:
        return np.arange(n)
    text = spec.strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 2:
                raise ValueError
            lo = int(parts[0]) if parts[0].strip() else 0
            hi = int(parts[1]) if parts[1].strip() else n
            rows = np.arange(n)[lo:hi]
        else:
            rows = np.array([int(t) for t in text.split(",") if t.strip()], dtype=np.int64)
    except ValueError:
        raise ValueError(f"--rows must be START:STOP or a comma list of integers, got {spec!r}") from None
    if rows.size == 0:
        raise ValueError(f"--rows {spec!r} selects no row of the {n} in the features file")
    bad = rows[(rows < -n) | (rows >= n)]
    if bad.size:
        raise ValueError(f"--rows {spec!r}: row {int(bad[0])} is outside the {n} rows")
    return np.where(rows < 0, rows + n, rows)


def _plot_paths(path: str, rows: np.ndarray) -> List[str]:
    if rows.size == 1:
        return [path]
    stem, ext = os.path.splitext(path)
    return [f"{stem}_{int(r)}{ext or '.png'}" for r in rows[:_MAX_PLOTS]]


def run_explain(args: argparse.Namespace) -> int:
    """Run ``iis explain`` with parsed arguments; returns the exit status."""
    from ._predictor import InterpretablePredictor
    from ._validation import check_output, json_text, printable

    if args.top is not None and args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    check_output(args.json_out, "--json")
    check_output(args.plot, "--plot")
    model = InterpretablePredictor.load(args.model)
    x = _load_features(args.features, args.key)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N, d), got shape {x.shape}")
    rows = _parse_rows(args.rows, x.shape[0])
    exps = model.explain(x[rows], top=args.top, by=args.by)
    for e, r in zip(exps, rows):
        e.sample = int(r)
    print(printable(f"{len(exps)} sample(s), {model.library_.n_concepts} concepts "
                    f"({model.library_.kind}), {model.k_} kept per sample, classes {model.classes_.tolist()}"))
    for e in exps:
        print(e.to_text())
    if args.show_global:
        print("\nconcepts that weigh most for each class:")
        print(model.global_explanation_text(args.top))
    if args.json_out:
        json_text([e.to_dict() for e in exps], args.json_out)
        print(f"wrote {args.json_out}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        paths = _plot_paths(args.plot, rows)
        for e, p in zip(exps, paths):
            ax = e.plot()
            ax.set_title(f"sample {e.sample}: " + ax.get_title(), fontsize=10)
            ax.figure.tight_layout()
            ax.figure.savefig(p, dpi=120)
            plt.close(ax.figure)
            print(f"wrote {p}")
        if rows.size > len(paths):
            print(f"iis: plotted the first {len(paths)} of {rows.size} rows", file=sys.stderr)
    return 0
