"""ImageNet-shaped ``iis.score``: time and peak resident memory on memory-mapped features.

The workload of the ImageNet-scale goal: train features 1,281,167 x 2048 float32 (10.5 GB)
and eval features 50,000 x 2048 as ``.npy`` files opened with ``np.load(mmap_mode="r")``,
K = 1,000 classes, a Prototype library of M = 200 concepts, the default sparsity grid.
The features are synthetic (``workloads.MixtureSpec``'s generator at d = 2048, K = 1,000:
class centres in a low-rank subspace, sub-clusters, nuisance directions, noise, ReLU), written
to disk chunk by chunk, so that generating them never holds the arrays in memory.

    python benchmarks/imagenet_scale.py                                    # full size
    python benchmarks/imagenet_scale.py --n-train 256000 --n-eval 10000    # a fifth
    python benchmarks/imagenet_scale.py --dir /data/iis-imagenet --keep    # keep the data

``iis.score`` runs in a child process that reports its own peak resident set (VmHWM,
which counts the memory-mapped file pages it touched, i.e. up to the whole train file)
from the start of the process, imports included; the parent also reports
``ru_maxrss`` of its children. Results: ``benchmarks/results/imagenet_scale.md`` and
``.json`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workloads import MixtureSpec, _fixed_params  # noqa: E402

IMAGENET_TRAIN, IMAGENET_EVAL = 1_281_167, 50_000
D, K, M = 2048, 1000, 200
# the generator at ImageNet's d and K: a wider latent space for 1,000 classes
SPEC = MixtureSpec(latent_dim=256, n_modes=3, sep=0.3, mode_spread=0.6, nuisance_dim=64,
                   nuisance_scale=1.5, noise=1.0, offset=0.5)
CHUNK = 8192
SEED = 0


def _write_split(path: Path, n: int, split_id: int, params) -> np.ndarray:
    """Write an (n, D) float32 .npy chunk by chunk (plain writes: no mapping, no full
    array in memory); return the labels."""
    means, A, B, mu = params
    rng = np.random.default_rng(np.random.SeedSequence([SEED, split_id, 0]))
    y = np.arange(n, dtype=np.int64) % K
    rng.shuffle(y)
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                 "shape": (n, D)})
        for c, start in enumerate(range(0, n, CHUNK)):
            stop = min(start + CHUNK, n)
            g = np.random.default_rng(np.random.SeedSequence([SEED, split_id, 1, c]))
            mode = g.integers(0, SPEC.n_modes, size=stop - start)
            z = means[y[start:stop], mode] + g.standard_normal((stop - start, SPEC.latent_dim), dtype=np.float32)
            h = z @ A
            h += g.standard_normal((stop - start, SPEC.nuisance_dim), dtype=np.float32) @ B
            h += SPEC.noise * g.standard_normal((stop - start, D), dtype=np.float32)
            h += mu
            np.maximum(h, 0, out=h)
            fh.write(np.ascontiguousarray(h, dtype=np.float32).tobytes())
    return y


def generate(folder: Path, n_train: int, n_eval: int) -> dict:
    """The dataset in ``folder`` (reused when its recorded sizes match)."""
    meta_path = folder / "meta.json"
    want = dict(n_train=n_train, n_eval=n_eval, d=D, K=K, M=M, seed=SEED, spec=dataclasses.asdict(SPEC))
    if meta_path.exists() and json.loads(meta_path.read_text()).get("want") == want:
        return json.loads(meta_path.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    params = _fixed_params(D, K, SPEC, SEED)
    ytr = _write_split(folder / "train_features.npy", n_train, 1, params)
    yev = _write_split(folder / "eval_features.npy", n_eval, 2, params)
    # prototype elements: 20 embeddings per class from the same distribution (split 3)
    n_el = 20 * K
    yel = _write_split(folder / "elements.npy", n_el, 3, params)
    np.save(folder / "train_labels.npy", ytr)
    np.save(folder / "eval_labels.npy", yev)
    np.save(folder / "element_labels.npy", yel)
    meta = dict(want=want, generate_s=round(time.perf_counter() - t0, 1))
    meta_path.write_text(json.dumps(meta))
    return meta


def _status() -> dict:
    out = {}
    for line in open("/proc/self/status"):
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) * 1024
    return out


def child(folder: Path, threads: int) -> None:
    """Score the memory-mapped dataset once; print one JSON line."""
    import iis

    ftr = np.load(folder / "train_features.npy", mmap_mode="r")
    fev = np.load(folder / "eval_features.npy", mmap_mode="r")
    ytr = np.load(folder / "train_labels.npy")
    yev = np.load(folder / "eval_labels.npy")
    lib = iis.ConceptLibrary.prototype(np.load(folder / "elements.npy"), np.load(folder / "element_labels.npy"),
                                       n_concepts=M, seed=SEED)
    before = _status()
    t0 = time.perf_counter()
    marks, warm, log = {}, [], open(folder / "progress.log", "w", buffering=1)  # copied beside the results

    def progress(e):  # the probe's phases (its start from a subsample, then the full fit), and a log
        now = time.perf_counter() - t0
        if e.stage == "probe":
            marks.setdefault(e.event, now)
            if e.event == "warm":  # each fit of the start counts its iterations from 1
                if e.iteration == 1:
                    warm.append(0)
                warm[-1] = e.iteration
                marks["warm_end"] = now
        log.write(f"{now:.1f} {e.stage} {e.index} {e.event} {e.iteration} {e.loss:.6g} {e.grad_max:.3g}\n")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = iis.score(ftr, ytr, fev, yev, lib, n_threads=threads, progress=progress)
    wall = time.perf_counter() - t0
    probe_warm_s = marks["warm_end"] - marks["start"] if warm else 0.0
    after = _status()
    print(json.dumps(dict(
        wall_s=wall, timings=res.timings, probe_accuracy=res.probe_accuracy, iis=res.iis,
        iis_normalized=res.iis_normalized, sparsities=res.sparsities.tolist(), kept=res.kept.tolist(),
        ip_accuracy=res.ip_accuracy.tolist(), arr=res.arr.tolist(), n_iter=res.n_iter.tolist(),
        stop_reason=res.stop_reason, probe_n_iter=res.probe_n_iter, probe_stop_reason=res.probe_stop_reason,
        probe_warm_iters=warm, probe_warm_s=probe_warm_s,
        rss_before_score=before.get("VmRSS"), vmhwm=after.get("VmHWM"),
        train_bytes=int(ftr.nbytes), eval_bytes=int(fev.nbytes),
        warnings=[str(w.message)[:200] for w in caught], iis_file=iis.__file__)))


def _cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def report(r: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    t = r["timings"]
    rows = "\n".join(f"| {s:g} | {k} | {it} | {st} | {a:.4f} | {ar:.4f} |" for s, k, it, st, a, ar in zip(
        r["sparsities"], r["kept"], r["n_iter"], r["stop_reason"], r["ip_accuracy"], r["arr"]))
    md = f"""# ImageNet-shaped `iis.score` (memory-mapped features)

Command: `{r["command"]}`

Machine: {r["machine"]}; threads {r["threads"]}; load average before {r["load_before"]}, after {r["load_after"]}.

Data: train {r["n_train"]:,} x {D} float32 ({_gib(r["train_bytes"])}), eval {r["n_eval"]:,} x {D}
({_gib(r["eval_bytes"])}), both `np.load(..., mmap_mode="r")` (in the page cache after being
written); K = {K}, Prototype library M = {M}, the default grid. Generated in {r["generate_s"]} s
(not counted).

| | |
|---|---|
| total (`iis.score` wall) | {r["wall_s"]:.1f} s |
| projection | {t["project"]:.1f} s |
| sparsity path (8 ratios) | {t["path"]:.1f} s |
| probe | {t["probe"]:.1f} s |
| probe L-BFGS iterations | {r["probe_n_iter"]} ({r["probe_stop_reason"]}) |
| probe's warm start (fits on every 64th, then every 8th row: iterations) | {r["probe_warm_s"]:.1f} s ({", ".join(map(str, r["probe_warm_iters"])) or "none"}) |
| probe accuracy | {r["probe_accuracy"]:.4f} |
| IIS (normalised) | {r["iis"]:.4f} ({r["iis_normalized"]:.4f}) |
| peak RSS (child VmHWM, whole process) | {_gib(r["vmhwm"])} |
| peak RSS / train feature bytes | {r["rss_ratio"]:.3f} |
| ru_maxrss of the child | {_gib(r["ru_maxrss_children"])} |

| s | k | iterations | stop | IP accuracy | ARR |
|---|---|---|---|---|---|
{rows}
"""
    out.with_suffix(".md").write_text(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=IMAGENET_TRAIN)
    ap.add_argument("--n-eval", type=int, default=IMAGENET_EVAL)
    ap.add_argument("--dir", default="/tmp/iis-imagenet-scale", help="where the generated .npy files live")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the generated data (default: delete it)")
    ap.add_argument("--out", default=str(HERE / "results" / "imagenet_scale"),
                    help="results path without suffix (.md and .json are written)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    folder = Path(args.dir) / f"n{args.n_train}-e{args.n_eval}"
    if args.child:
        child(folder, args.threads)
        return
    # generation in a child too, so that ru_maxrss of the children is the score's
    gen = subprocess.run([sys.executable, "-c", "import sys, json; sys.path.insert(0, sys.argv[1]); "
                          "import imagenet_scale as b; from pathlib import Path; "
                          "print(json.dumps(b.generate(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))",
                          str(HERE), str(folder), str(args.n_train), str(args.n_eval)],
                         capture_output=True, text=True)
    if gen.returncode != 0:
        sys.exit(gen.stderr)
    meta = json.loads(gen.stdout.strip().splitlines()[-1])
    load_before = open("/proc/loadavg").read().split()[:3]
    p = subprocess.run([sys.executable, __file__, "--child", "--dir", args.dir, "--n-train", str(args.n_train),
                        "--n-eval", str(args.n_eval), "--threads", str(args.threads)], capture_output=True, text=True)
    load_after = open("/proc/loadavg").read().split()[:3]
    if p.returncode != 0:
        sys.exit(p.stderr[-4000:])
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(command="python benchmarks/imagenet_scale.py " + " ".join(sys.argv[1:]), n_train=args.n_train,
             n_eval=args.n_eval, threads=args.threads, generate_s=meta["generate_s"],
             load_before=" ".join(load_before), load_after=" ".join(load_after),
             machine=f"{_cpu()}, {os.cpu_count()} cores, "
                     f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
             ru_maxrss_children=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
    r["rss_ratio"] = r["vmhwm"] / r["train_bytes"]
    report(r, Path(args.out))
    shutil.copy(folder / "progress.log", Path(args.out).with_suffix(".log"))  # every fit's events, timed
    print(Path(args.out).with_suffix(".md").read_text())
    if not args.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
