"""Command line: ``iis score``, ``iis demo``, ``iis config``, ``iis --version``.

``.npz`` keys
-------------
train / eval files:  ``features`` (N, d) float array, ``labels`` (N,)
elements file:       ``features`` (n_elements, d), ``labels`` (n_elements,) (class of the
                     source image; required for ``prototype``, optional for ``cluster``)
library file:        as written by ``ConceptLibrary.save`` (``vectors``, ``names``, ...)

Only the members named above are read; inputs must be regular files.

Exit status
-----------
0  done; 2  bad input or usage (one ``iis: error:`` line on stderr); 3  the run finished
but its IIS is not a number (written as ``null`` in the JSON); 1  an unexpected
error (one line; set ``IIS_DEBUG=1`` for the traceback); 130  interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional



def _load_npz(path: str, what: str, need_labels: bool = True) -> tuple:
    from ._validation import read_npz

    try:
        z = read_npz(path, what, ("features", "labels"))
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    if "features" not in z:
        from ._validation import npz_names

        raise ValueError(f"{what} file {path} has no 'features' array (arrays: {sorted(npz_names(path, what))})")
    feats, labels = z["features"], z.get("labels")
    if need_labels and labels is None:
        raise ValueError(f"{what} file {path} has no 'labels' array")
    return feats, labels


def _parse_sparsities(text: Optional[str]):
    from . import DEFAULT_GRID

    if text is None:
        return DEFAULT_GRID
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--sparsities must be comma-separated numbers, got {text!r}") from None


def _build_library(spec: str, elements: Optional[str], train: tuple, seed: int, threads):
    from . import ConceptLibrary

    if spec.endswith(".npz") or spec.startswith("file:"):
        return ConceptLibrary.load(spec[5:] if spec.startswith("file:") else spec)
    kind, _, count = spec.partition(":")
    if kind not in ("prototype", "cluster"):
        raise ValueError(f"--library must be prototype:M, cluster:M or a library .npz, got {spec!r}")
    try:
        m = int(count) if count else 200
    except ValueError:
        raise ValueError(f"--library {spec!r}: the concept count must be an integer") from None
    if elements:
        feats, labels = _load_npz(elements, "elements", need_labels=(kind == "prototype"))
    else:
        print("iis: no --elements given; using the train features themselves as elements", file=sys.stderr)
        feats, labels = train
    if kind == "prototype":
        return ConceptLibrary.prototype(feats, labels, n_concepts=m, seed=seed)
    return ConceptLibrary.cluster(feats, n_concepts=m, seed=seed, element_labels=labels, n_threads=threads)


def check_output(path: Optional[str], flag: str) -> None:
    """Refuse an output path that cannot be written, before any computation."""
    if not path:
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag} {path!r}: folder {folder!r} does not exist (No such file or directory)")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{flag} {path!r} is not writable")


def cmd_score(args: argparse.Namespace) -> int:
    from . import score

    check_output(args.out, "--out")
    check_output(args.plot, "--plot")
    train = _load_npz(args.train, "train")
    evals = _load_npz(args.eval, "eval")
    lib = _build_library(args.library, args.elements, train, args.seed, args.threads)
    res = score(train[0], train[1], evals[0], evals[1], lib, sparsities=_parse_sparsities(args.sparsities),
                normalize=args.normalize, mask=args.mask, keep=args.keep, l2=args.l2,
                n_threads=args.threads, progress=not args.quiet)
    print(repr(res))
    if args.out:
        res.to_json(args.out)
        print(f"wrote {args.out}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ax = res.plot()
        ax.figure.tight_layout()
        ax.figure.savefig(args.plot, dpi=120)
        plt.close(ax.figure)
        print(f"wrote {args.plot}")
    if not res.iis == res.iis:
        print("iis: warning: the IIS is not a number (written as null); see the warnings above", file=sys.stderr)
        return 3
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(out_dir=args.out, n_threads=args.threads, seed=args.seed)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from . import show_config

    show_config()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="iis", description="Inherent Interpretability Score of representations.")
    p.add_argument("--version", action="version", version=f"iis {__version__}")
    sub = p.add_subparsers(dest="command")

    s = sub.add_parser("score", help="IIS of train/eval features with a concept library")
    s.add_argument("--train", required=True, help=".npz with 'features' (N, d) and 'labels' (N,)")
    s.add_argument("--eval", required=True, help=".npz with 'features' and 'labels'")
    s.add_argument("--library", default="prototype:200",
                   help="prototype:M | cluster:M | path to a saved ConceptLibrary .npz")
    s.add_argument("--elements", help=".npz with element 'features' (and 'labels' for prototype)")
    s.add_argument("--out", help="write the result as JSON here")
    s.add_argument("--plot", help="write the ARR plot (PNG) here")
    s.add_argument("--sparsities", help="comma-separated ratios (default 0,0.1,0.3,0.5,0.7,0.9,0.95,0.98)")
    s.add_argument("--normalize", choices=["layernorm", "standardize", "none"], default=None)
    s.add_argument("--mask", choices=["hard", "soft"], default="hard")
    s.add_argument("--keep", choices=["default", "published"], default="default")
    s.add_argument("--l2", type=float, default=1e-4)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_score)

    d = sub.add_parser("demo", help="run the pipeline on scikit-learn's digits (real data, offline)")
    d.add_argument("--out", default="iis_demo_out", help="folder for demo.json and arr.png")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=None)
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("config", help="show BLAS/OpenMP configuration")
    c.set_defaults(func=cmd_config)

    from ._explain_cli import add_explain_parser

    add_explain_parser(sub)  # iis explain --model predictor.npz --features x.npz --top 5
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("iis: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from ._validation import printable

        if os.environ.get("IIS_DEBUG"):
            raise
        if isinstance(exc, (ValueError, TypeError, OSError)):  # OSError: a missing file or output folder
            print(f"iis: error: {printable(exc)}", file=sys.stderr)
            return 2
        print(f"iis: error: {type(exc).__name__}: {printable(exc) or 'no message'} "
              "(unexpected; IIS_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
