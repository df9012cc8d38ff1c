"""Time to build each of the paper's four concept libraries, for the cost of an ImageNet sweep.

On ImageNet-shaped data (d = 2048, K = 1000 classes, M = 200 concepts; class-structured
random features, float32, seeded), ``--threads`` threads:

- Prototype: ``ConceptLibrary.prototype`` from 20,000 elements (sampling: no training).
- Cluster: ``ConceptLibrary.cluster`` on 20,000 elements (its default ``max_elements``).
- End2End and Text train by full-batch Adam over the train features. Their time per step
  is measured as (time of ``--steps`` + 6 steps - time of ``--steps`` steps) / 6, which
  removes the set-up and the evaluations, at N_train = ``--n-train`` / 4 and
  ``--n-train``; the line a + b N through those two points gives the time per step at
  ImageNet's 1,281,167 train rows (the work per step is a fixed part, End2End's concept
  vectors from the elements, plus GEMMs linear in N). The hours for the default step
  caps (End2End 2,000, Text 1,000) are printed; early stopping usually ends sooner.
  Text uses ``--concepts`` CLIP concepts (embeddings of dimension 512); its time per step
  grows linearly with the number of concepts that pass the top-5 filter.

    python benchmarks/library_fit.py [--threads 2] [--n-train 40000] [--steps 2]

Writes ``benchmarks/results/library_fit.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import iis  # noqa: E402

IMAGENET_TRAIN = 1_281_167


def data(n, d, k, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centers = rng.standard_normal((k, d)).astype(np.float32)
    x = np.maximum(centers[y] + 2.0 * rng.standard_normal((n, d), dtype=np.float32), 0)
    return x, y


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=40000)
    ap.add_argument("--elements", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--concepts", type=int, default=1000)
    ap.add_argument("--out", default=str(HERE / "results" / "library_fit"))
    args = ap.parse_args()
    d, k, m, nt = 2048, 1000, 200, args.threads
    load0 = open("/proc/loadavg").read().split()[:3]
    f, y = data(args.n_train, d, k, 0)
    el, ely = data(args.elements, d, k, 1)
    rows = []

    def timed(name, fn):
        t0 = time.perf_counter()
        fn()
        r = {"library": name, "seconds": time.perf_counter() - t0}
        rows.append(r)
        print(json.dumps(r), flush=True)

    def per_step(name, fn):
        """Seconds per step at n/2 and n train rows, and the line through them at ImageNet size."""
        ns, t = [args.n_train // 4, args.n_train], []
        for n in ns:
            times = []
            for steps in (args.steps, args.steps + 6):
                # eval_every, patience: exactly `steps` steps, one evaluation before and after
                common = dict(steps=steps, eval_every=steps, patience=steps + 1, holdout=0.01, seed=0, n_threads=nt)
                t0 = time.perf_counter()
                fn(n, common)
                times.append(time.perf_counter() - t0)
            t.append((times[1] - times[0]) / 6)
        b = (t[1] - t[0]) / (ns[1] - ns[0])
        r = {"library": name, "n_train": ns, "seconds_per_step": t,
             "imagenet_seconds_per_step": t[1] + b * (IMAGENET_TRAIN - ns[1])}
        rows.append(r)
        print(json.dumps(r), flush=True)

    timed("prototype", lambda: iis.ConceptLibrary.prototype(el, ely, n_concepts=m, seed=0))
    timed("cluster", lambda: iis.ConceptLibrary.cluster(el, n_concepts=m, seed=0, element_labels=ely, n_threads=nt))
    per_step("end2end", lambda n, c: iis.ConceptLibrary.end2end(el, f[:n], y[:n], n_concepts=m, **c))
    rng = np.random.default_rng(2)
    img = rng.standard_normal((args.n_train, 512)).astype(np.float32)
    txt = rng.standard_normal((args.concepts, 512)).astype(np.float32)
    names = [f"concept {i}" for i in range(args.concepts)]
    per_step("text", lambda n, c: iis.ConceptLibrary.text(names, f[:n], img[:n], txt, top5_cutoff=-1.0,
                                                          interpretability_cutoff=-1.0, **c))
    load1 = open("/proc/loadavg").read().split()[:3]
    caps = {"end2end": 2000, "text": 1000}
    lines = [f"# Building the four libraries (d {d}, K {k}, M {m}, {nt} threads)", "",
             f"Load average before {' '.join(load0)}, after {' '.join(load1)}. Prototype and Cluster from "
             f"{args.elements:,} elements. End2End and Text: seconds per Adam step measured at two train sizes "
             f"and extrapolated along the line through them to ImageNet's {IMAGENET_TRAIN:,} rows "
             f"(Text: {args.concepts} concepts).", "",
             "| library | measured | s per step at ImageNet size | hours at ImageNet size for the step cap |",
             "|---|---|---:|---:|"]
    for r in rows:
        if "n_train" in r:
            h = r["imagenet_seconds_per_step"] * caps[r["library"]] / 3600
            got = ", ".join(f"{s:.2f} s/step at N = {n:,}" for n, s in zip(r["n_train"], r["seconds_per_step"]))
            lines.append(f"| {r['library']} | {got} | {r['imagenet_seconds_per_step']:.1f} | "
                         f"{h:.1f} ({caps[r['library']]} steps) |")
        else:
            lines.append(f"| {r['library']} | {r['seconds']:.2f} s | | {r['seconds'] / 3600:.4f} |")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as fh:
        json.dump({"meta": {"threads": nt, "d": d, "k": k, "m": m, "n_train": args.n_train,
                            "elements": args.elements, "concepts": args.concepts, "loadavg_before": load0,
                            "loadavg_after": load1}, "rows": rows}, fh, indent=1)
    with open(args.out + ".md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
