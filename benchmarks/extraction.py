"""CPU forward throughput of ImageNet models, the extraction side of a sweep's cost.

For each model: images/s of ``model.forward_features`` then the pooled pre-logits
(``forward_head(pre_logits=True)``, what a sweep extracts by default) on float32 batches of
``--batch`` random 224 px images, ``torch.set_num_threads(--threads)``, in inference mode,
after one warm-up batch, timed over at least ``--min-seconds`` and ``--min-batches``
batches. The packaged ImageNet EfficientNet-Lite0/1/2 (``iis.torch.efficientnet_lite``)
and randomly initialised timm models of common ImageNet architectures (a forward pass
costs the same with any weights), and the image tower of CLIP ViT-B/32, which a text
library's CLIP embeddings of the train images go through. A model whose warm-up batch takes longer than
``--skip-seconds`` is reported as skipped. Hours for ImageNet: 1,331,167 images (train
1,281,167 + val 50,000) / images/s / 3600.

    python benchmarks/extraction.py [--threads 2] [--batch 32] [--models resnet18,resnet50]

Writes ``benchmarks/results/extraction.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

IMAGENET = 1_281_167 + 50_000
PACKAGED = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
TIMM = ["resnet18", "resnet50", "resnet101", "resnet152", "mobilenetv3_large_100", "efficientnet_b0",
        "convnext_tiny", "swin_tiny_patch4_window7_224", "deit_small_patch16_224", "vit_small_patch16_224",
        "deit_base_patch16_224", "vit_base_patch16_224",
        "vit_base_patch32_clip_224"]  # the image tower of CLIP ViT-B/32: a text library's CLIP embeddings


def build(name):
    import timm

    if name in PACKAGED:
        from iis.torch import efficientnet_lite

        return efficientnet_lite(PACKAGED.index(name), True)
    return timm.create_model(name, pretrained=False)


def measure(name, batch, min_seconds, min_batches, skip_seconds):
    import torch

    torch.manual_seed(0)
    model = build(name).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(batch, 3, 224, 224)

    def forward():
        return model.forward_head(model.forward_features(x), pre_logits=True)

    with torch.inference_mode():
        t0 = time.perf_counter()
        dim = forward().shape[1]
        warm = time.perf_counter() - t0
        if warm > skip_seconds:
            return {"model": name, "params_M": params / 1e6, "skipped": f"warm-up batch {warm:.0f} s"}
        times = []
        while len(times) < min_batches or sum(times) < min_seconds:
            t0 = time.perf_counter()
            forward()
            times.append(time.perf_counter() - t0)
    ips = batch * len(times) / sum(times)
    return {"model": name, "params_M": params / 1e6, "dim": int(dim), "batches": len(times),
            "seconds": sum(times), "images_per_s": ips, "imagenet_hours": IMAGENET / ips / 3600}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--min-seconds", type=float, default=10.0)
    ap.add_argument("--min-batches", type=int, default=2)
    ap.add_argument("--skip-seconds", type=float, default=60.0)
    ap.add_argument("--models", default=",".join(PACKAGED + TIMM))
    ap.add_argument("--out", default=str(HERE / "results" / "extraction"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    load0 = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else []
    rows = []
    for name in args.models.split(","):
        r = measure(name, args.batch, args.min_seconds, args.min_batches, args.skip_seconds)
        rows.append(r)
        print(json.dumps(r), flush=True)
    load1 = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else []
    meta = {"cpu": platform.processor() or platform.machine(), "threads": args.threads, "batch": args.batch,
            "image_size": 224, "torch": torch.__version__, "loadavg_before": load0, "loadavg_after": load1,
            "imagenet_images": IMAGENET}
    try:
        meta["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [f"# Extraction throughput on the CPU ({meta['cpu']}, {args.threads} threads, torch {torch.__version__})",
             "", f"Batch {args.batch}, 224 px, float32, forward_features + pooled pre-logits, inference mode. "
             f"Load average before {' '.join(load0)}, after {' '.join(load1)}. GPU throughput: not measured "
             "(no GPU available).", "",
             "| model | params (M) | feature dim | images/s | hours for ImageNet (1.33M images) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['params_M']:.1f} | | skipped: {r['skipped']} | |")
        else:
            lines.append(f"| {r['model']} | {r['params_M']:.1f} | {r['dim']} | {r['images_per_s']:.1f} | "
                         f"{r['imagenet_hours']:.1f} |")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
