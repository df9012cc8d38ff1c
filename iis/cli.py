"""Command line: ``iis score``, ``iis demo``, ``iis finetune``, ``iis sweep``, ``iis config``, ``iis --version``.

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
import math
import os
import sys
from typing import Callable, List, Optional


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


def cmd_score(args: argparse.Namespace) -> int:
    from . import score
    from ._validation import check_output

    check_output(args.out, "--out")
    check_output(args.plot, "--plot")
    train = _load_npz(args.train, "train")
    evals = _load_npz(args.eval, "eval")
    lib = _build_library(args.library, args.elements, train, args.seed, args.n_threads)
    res = score(train[0], train[1], evals[0], evals[1], lib, sparsities=_parse_sparsities(args.sparsities),
                normalize=args.normalize, mask=args.mask, keep=args.keep, l2=args.l2, tol=args.tol,
                max_iter=args.max_iter, n_threads=args.n_threads, progress=not args.quiet)
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

    run(out_dir=args.out, n_threads=args.n_threads, seed=args.seed)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .torch._finetune_cli import run  # needs iis[torch]

    run(args)
    return 0


def _number(kind: type, low: float, high: Optional[float] = None, open_low: bool = False) -> Callable:
    """An argparse type: a ``kind`` number v with low <= v (low < v if open_low) and v < high."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not (math.isfinite(v) and (v > low if open_low else v >= low) and (high is None or v < high)):
            raise argparse.ArgumentTypeError(f"must lie in {'(' if open_low else '['}{low}, "
                                             f"{'inf' if high is None else high}), got {text}")
        return v
    return parse


def _grid(text: str) -> tuple:
    try:
        return _parse_sparsities(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_finetune_parser(sub) -> None:
    f = sub.add_parser(
        "finetune", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="fine-tune a backbone with interpretability maximisation (needs iis[torch])",
        description="Fine-tune a backbone with interpretability maximisation (IIS paper, Eq. 8): "
                    "L = CE(h(f), y) + weight * CE(g(mask_s(norm(f @ unit(P).T))), y). Reports the accuracy "
                    "of h and g and the IIS before and after; writes a checkpoint every epoch, summary.json "
                    "and finetune.png.")
    count, frac = _number(int, 1), _number(float, 0, 1)
    f.add_argument("--model", default="tf_efficientnet_lite0",
                   help="timm model name; tf_efficientnet_lite0's ImageNet weights ship in a package "
                        "(offline), other pretrained weights are downloaded by timm")
    f.add_argument("--data", default="digits",
                   help="built-in dataset (digits) or an ImageFolder directory (class sub-folders, "
                        "optionally inside train/ and val/)")
    f.add_argument("--out", default="iis-finetune-out", help="output directory (checkpoint, summary.json, plot)")
    f.add_argument("--epochs", type=_number(int, 0), default=5, help="training epochs")
    f.add_argument("--lr", type=_number(float, 0, open_low=True), default=1e-4,
                   help="peak learning rate (linear warm-up, then cosine decay to 0)")
    f.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="AdamW, or SGD with momentum 0.9")
    f.add_argument("--weight-decay", type=_number(float, 0), default=1e-4, help="weight decay of the optimiser")
    f.add_argument("--warmup", type=frac, default=0.1, help="fraction of the steps with linear lr warm-up")
    f.add_argument("--weight", type=_number(float, 0), default=1.0,
                   help="lambda, weight of the interpretability term (0: baseline without it)")
    f.add_argument("--sparsity", type=frac, default=0.1, help="s of the concept head's mask")
    f.add_argument("--mask", choices=["hard", "soft"], default="hard", help="sparsity mask, as in iis score")
    f.add_argument("--keep", choices=["default", "published"], default="default",
                   help="concepts kept: M - floor(M*s) (default) or one fewer (published code)")
    f.add_argument("--n-concepts", type=count, default=200, help="M, the number of prototypes")
    f.add_argument("--normalize", choices=("layernorm", "none"), default="layernorm",
                   help="normalisation of the concept activations")
    f.add_argument("--elements", choices=("patches", "segments"), default="patches",
                   help="visual elements the prototypes are embedded from")
    f.add_argument("--proto-per-class", type=count, default=10,
                   help="training images per class whose elements are cut")
    f.add_argument("--refresh-every", type=_number(int, 0), default=0,
                   help="rebuild the prototypes from the current backbone every N epochs (0: never)")
    f.add_argument("--batch-size", type=count, default=64, help="training batch size")
    f.add_argument("--image-size", type=_number(int, 8), default=None,
                   help="input side in pixels (default: 64 for digits, else the model's)")
    f.add_argument("--eval-fraction", type=_number(float, 0, 1, open_low=True), default=0.3,
                   help="held-out fraction when the data has no separate eval split")
    f.add_argument("--train-per-class", type=count, default=None, help="use only N training images per class")
    f.add_argument("--eval-per-class", type=count, default=None, help="use only N eval images per class")
    f.add_argument("--augment", action="store_true", help="random translations during training")
    f.add_argument("--bn", choices=("frozen", "train"), default="frozen",
                   help="BatchNorm statistics: keep the pre-trained ones (frozen) or update them")
    f.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random initialisation instead of pretrained weights")
    f.add_argument("--weights", default=None, help="local state-dict file to start from (offline weights)")
    f.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto",
                   help="mixed precision (auto: bf16, or fp16 without bf16, on CUDA; off on the CPU)")
    f.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    f.add_argument("--seed", type=_number(int, 0), default=0, help="seed of the splits, prototypes and training")
    f.add_argument("--workers", type=_number(int, 0), default=0, help="DataLoader worker processes")
    f.add_argument("--n-threads", type=int, default=None,
                   help="threads of torch and of the IIS (default: all cores; -1 all, -2 all but one, ...)")
    f.add_argument("--iis-sparsities", type=_grid, default=None,
                   help="comma-separated sparsity grid of the IIS (default 0,0.1,0.3,0.5,0.7,0.9,0.95,0.98)")
    f.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from OUT/checkpoint.pt (or the given checkpoint file or directory)")
    f.add_argument("--stop-after", type=count, default=None,
                   help="stop after N epochs in this invocation (continue later with --resume)")
    f.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    f.add_argument("--no-plot", dest="plot", action="store_false", help="do not write finetune.png")
    f.set_defaults(func=cmd_finetune)


def cmd_config(args: argparse.Namespace) -> int:
    from . import show_config

    show_config()
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="iis", description="Inherent Interpretability Score of representations.")
    p.add_argument("--version", action="version", version=f"iis {__version__}")
    sub = p.add_subparsers(dest="command", title="commands", help="run 'iis COMMAND -h' for its options")

    s = sub.add_parser("score", help="IIS of train/eval features with a concept library")
    s.add_argument("--train", required=True, help=".npz with 'features' (N, d) and 'labels' (N,)")
    s.add_argument("--eval", required=True, help=".npz with 'features' and 'labels'")
    s.add_argument("--library", default="prototype:200",
                   help="prototype:M | cluster:M | path to a saved ConceptLibrary .npz")
    s.add_argument("--elements", help=".npz with element 'features' (and 'labels' for prototype)")
    s.add_argument("--out", help="write the result as JSON here")
    s.add_argument("--plot", help="write the ARR plot (PNG) here")
    s.add_argument("--sparsities", help="comma-separated ratios (default 0,0.1,0.3,0.5,0.7,0.9,0.95,0.98)")
    s.add_argument("--normalize", choices=["layernorm", "standardize", "none"], default=None,
                   help="normalisation of the concept activations (default: the library's, layernorm "
                        "for prototype and cluster libraries)")
    s.add_argument("--mask", choices=["hard", "soft"], default="hard",
                   help="hard top-k mask (default, as the published code) or soft threshold (Eq. 4)")
    s.add_argument("--keep", choices=["default", "published"], default="default",
                   help="concepts kept per sample: k = M - floor(M s) (default), or one fewer as the "
                        "published code")
    s.add_argument("--l2", type=float, default=1e-4,
                   help="L2 penalty of the probe and the predictors: mean CE + l2/2 ||W||^2 (default 1e-4)")
    s.add_argument("--tol", type=float, default=1e-5,
                   help="solver tolerance: stop when max |gradient| <= tol (default 1e-5)")
    s.add_argument("--max-iter", type=int, default=1000, help="solver iterations at most (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="seed of the concept library's sampling (default 0)")
    s.add_argument("--n-threads", type=int, default=None,
                   help="threads (default: all cores; -1 all, -2 all but one, ...)")
    s.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    s.set_defaults(func=cmd_score)

    d = sub.add_parser("demo", help="run the pipeline on scikit-learn's digits (real data, offline)")
    d.add_argument("--out", default="iis_demo_out", help="folder for demo.json and arr.png")
    d.add_argument("--seed", type=int, default=0,
                   help="seed of the data split, the network and the concept library (default 0)")
    d.add_argument("--n-threads", type=int, default=None,
                   help="threads (default: all cores; -1 all, -2 all but one, ...)")
    d.set_defaults(func=cmd_demo)

    _add_finetune_parser(sub)

    c = sub.add_parser("config", help="show BLAS/OpenMP configuration")
    c.set_defaults(func=cmd_config)

    from ._explain_cli import add_explain_parser

    add_explain_parser(sub)  # iis explain --model predictor.npz --features x.npz --top 5

    from ._sweep_report import add_sweep_parser

    add_sweep_parser(sub)  # iis sweep SPEC.toml [--report] [--ray auto|ADDRESS]
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
