"""``iis finetune``: fine-tune a backbone with interpretability maximisation.

docs/method.md section 8 (paper Eq. 8), with the pieces of :mod:`iis.torch`
(:func:`load_model`, :class:`ImageDataset`, :func:`build_prototypes`,
:class:`ConceptHead`, :class:`InterpretabilityLoss`). The run:

1. features of the train and eval splits under the pre-trained backbone; the
   prototype library; **IIS before** (``iis.score``);
2. ``h`` (the model's new classifier) and ``g`` are warm-started as logistic
   regressions on those features (:func:`fit_linear`, the C solver), which gives their
   accuracies *before* fine-tuning;
3. ``--epochs`` epochs of AdamW (or SGD) on ``CE(h) + weight * CE(g)`` (cosine learning
   rate after a linear warm-up), evaluation of ``h`` and ``g`` and a checkpoint after
   every epoch (``--resume``); optionally the prototypes are rebuilt from the current
   backbone every ``--refresh-every`` epochs;
4. **IIS after** with prototypes rebuilt from the fine-tuned backbone from the same
   visual elements (also with the frozen training prototypes);
5. ``summary.json`` and ``finetune.png`` in ``--out``.

``--weight 0`` is the baseline without the second term: the backbone receives the
gradient of ``CE(h)`` only, while ``g`` still learns on detached features so that its
accuracy can be reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from .._api import score
from .._library import ConceptLibrary
from .._validation import check_threads
from ..datasets import load_digits_images, select_per_class, train_eval_split
from ._data import ImageDataset, data_config
from ._features import extract_features
from ._finetune import ConceptHead, FeatureModel, InterpretabilityLoss, build_prototypes, fit_linear
from ._models import load_model

CHECKPOINT, SUMMARY, PLOT = "checkpoint.pt", "summary.json", "finetune.png"
# settings a --resume may change; every other one must match the checkpoint's
_FREE = ("out", "epochs", "lr", "weight_decay", "warmup", "amp", "device", "workers", "n_threads", "resume",
         "stop_after", "progress", "plot", "iis_sparsities")


def _log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------
# Data: the built-in digits or an ImageFolder directory
# --------------------------------------------------------------------------------------
def _load_data(args: argparse.Namespace) -> tuple:
    """(images or file paths, labels, class names, train index, eval index, description)."""
    if args.data == "digits":
        items, labels = load_digits_images(size=args.image_size or 64)
        classes, split, name = [str(c) for c in range(10)], None, "digits (scikit-learn, 8x8 scans upsampled to RGB)"
    elif os.path.isdir(args.data):
        from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

        root = Path(args.data)
        sub = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
        ev_dir = next((sub[n] for n in ("val", "valid", "validation", "eval", "test") if n in sub), None)
        dirs = [sub["train"], ev_dir] if "train" in sub and ev_dir is not None else [root]
        classes = find_classes(str(dirs[0]))[0]
        if any(find_classes(str(d))[0] != classes for d in dirs):
            raise ValueError(f"{dirs[0]} and {dirs[-1]} do not hold the same class folders")
        if len(classes) < 2:
            raise ValueError(f"{dirs[0]} must hold at least 2 class folders, found {len(classes)}")
        found = [make_dataset(str(d), {c: i for i, c in enumerate(classes)}, extensions=IMG_EXTENSIONS)
                 for d in dirs]
        items = np.array([p for f in found for p, _ in f])
        labels = np.array([c for f in found for _, c in f], dtype=np.int64)
        split = (np.arange(len(found[0])), np.arange(len(found[0]), len(items))) if len(dirs) == 2 else None
        name = f"ImageFolder {root}"
    else:
        raise ValueError(f"--data {args.data!r} is neither a built-in dataset (digits) nor an existing "
                         "ImageFolder directory")
    tr, ev = split or train_eval_split(labels, args.eval_fraction, seed=args.seed)
    if args.train_per_class:
        tr = tr[select_per_class(labels[tr], args.train_per_class, seed=args.seed)]
    if args.eval_per_class:
        ev = ev[select_per_class(labels[ev], args.eval_per_class, seed=args.seed + 1)]
    if len(tr) == 0 or len(ev) == 0:
        raise ValueError(f"{args.data}: the train or eval split is empty")
    return items, labels, classes, tr, ev, name


def _raw(item: Any, size: int) -> np.ndarray:
    """A raw (size, size, 3) uint8 image for cutting visual elements."""
    if not isinstance(item, str):
        return item
    from PIL import Image

    with Image.open(item) as im:
        return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))


# --------------------------------------------------------------------------------------
# Pieces of the run
# --------------------------------------------------------------------------------------
def _device_and_amp(args: argparse.Namespace) -> tuple:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} was requested but CUDA is not available")
    if args.amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    if args.amp == "auto" and device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, amp


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in st["python"]))
    np.random.set_state((st["numpy"][0], np.asarray(st["numpy"][1], dtype=np.uint32), *st["numpy"][2:]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to 0 at ``total``."""
    if step < warmup:
        return base * (step + 1) / (warmup + 1)
    span = max(total - warmup, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to size/8 pixels (reflect padding), per sample."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    xp = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = (torch.randint(0, 2 * pad + 1, (n,), generator=gen) for _ in range(2))
    return torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def _evaluate(fmodel: FeatureModel, head: ConceptHead, loader, device, amp) -> tuple:
    """Top-1 accuracy of h and of g on ``loader`` (eval mode, no grad; modes restored)."""
    modes = [(m, m.training) for m in [*fmodel.modules(), *head.modules()]]
    fmodel.eval()
    head.eval()
    hits_h = hits_g = n = 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        for x, y in loader:
            y = y.to(device)
            feats, logits = fmodel(x.to(device))
            hits_h += int((logits.argmax(1) == y).sum())
            hits_g += int((head(feats).argmax(1) == y).sum())
            n += len(y)
    for m, was in modes:
        m.training = was
    return hits_h / n, hits_g / n


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    """Run one fine-tuning job (the options of ``iis finetune``) and return its summary.

    Returns
    -------
    dict
        ``config``, ``model``, ``data``, ``before`` and ``after`` (accuracy of h, of g,
        IIS), ``history`` (one entry per epoch) and timings; also written to
        ``OUT/summary.json``. A run stopped by ``--stop-after`` returns the history so
        far with ``complete: False``.
    """
    t_start = time.perf_counter()
    config = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    if check_threads(args.n_threads):  # negative: counted back from all cores, as iis.score
        torch.set_num_threads(max(1, args.n_threads if args.n_threads > 0 else os.cpu_count() + 1 + args.n_threads))
    device, amp = _device_and_amp(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = None
    if args.resume is not None:
        path = out / CHECKPOINT if args.resume == "auto" else Path(args.resume)
        path = path / CHECKPOINT if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        diff = [f"{k}: checkpoint {ckpt['config'].get(k)!r} vs now {v!r}" for k, v in config.items()
                if k not in _FREE and ckpt["config"].get(k) != v]
        if diff:
            raise ValueError(f"--resume: the checkpoint was written with other settings ({', '.join(diff)})")
        _log(f"resuming from {path} (epoch {ckpt['epoch']} of {args.epochs})")

    random.seed(args.seed)
    np.random.seed(args.seed % 2**32)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    items, labels, classes, tr, ev, data_name = _load_data(args)
    K = len(classes)
    model = load_model(args.model, pretrained=args.pretrained and args.weights is None, num_classes=K,
                       weights=args.weights).to(device)
    cfg = data_config(model)
    size = args.image_size or (64 if args.data == "digits" else cfg["size"])
    norm = {"size": size, "mean": cfg["mean"], "std": cfg["std"]}
    take = (lambda idx: list(items[idx])) if items.ndim == 1 else items.__getitem__  # paths or images
    train_set, eval_set = ImageDataset(take(tr), labels[tr], **norm), ImageDataset(take(ev), labels[ev], **norm)
    pick = tr[select_per_class(labels[tr], args.proto_per_class, seed=args.seed)]
    proto_images, proto_labels = [_raw(items[i], size) for i in pick], labels[pick]
    fmodel = FeatureModel(model)
    timings = {"data": time.perf_counter() - t0}
    _log(f"model: {args.model}; data: {data_name}, {K} classes, {len(tr)} train / {len(ev)} eval images at "
         f"{size}px; device {device}" + ("" if amp is None else f", autocast {str(amp).replace('torch.', '')}"))
    batches = dict(batch_size=max(args.batch_size, 64), device=device)

    def library():
        return build_prototypes(model, proto_images, proto_labels, args.n_concepts, elements=args.elements,
                                per_class=None, seed=args.seed, **norm, **batches)

    def features(when: str) -> tuple:
        """Held features of both splits and the prototype library of the current backbone."""
        t = time.perf_counter()
        feats = [extract_features(model, ds, progress=args.progress, num_workers=args.workers, **batches)
                 for ds in (train_set, eval_set)]
        lib = library()
        timings[f"features_{when}"] = time.perf_counter() - t
        return feats, lib

    def iis_of(feats: list, lib: ConceptLibrary, when: str) -> dict:
        t = time.perf_counter()
        res = score(feats[0], labels[tr], feats[1], labels[ev], lib, normalize=args.normalize, mask=args.mask,
                    keep=args.keep, n_threads=args.n_threads, progress=False,
                    **({"sparsities": args.iis_sparsities} if args.iis_sparsities else {}))
        timings[f"iis_{when}"] = time.perf_counter() - t
        return {**res.summary(), "seconds": round(timings[f"iis_{when}"], 3)}

    def new_head(prototypes) -> ConceptHead:
        return ConceptHead(prototypes, K, args.sparsity, normalize=args.normalize, mask=args.mask,
                           keep=args.keep).to(device)

    eval_loader = torch.utils.data.DataLoader(eval_set, batch_size=batches["batch_size"], num_workers=args.workers)
    if ckpt is None:
        feats, lib = features("before")
        before = iis_of(feats, lib, "before")
        head = new_head(lib)
        t0 = time.perf_counter()
        if isinstance(fmodel.classifier, nn.Linear):
            fit_linear(fmodel.classifier, feats[0], labels[tr], n_threads=args.n_threads)
        else:  # pragma: no cover - unusual heads
            _log(f"classifier {type(fmodel.classifier).__name__} is not nn.Linear; it is not warm-started")
        head.fit(feats[0], labels[tr], n_threads=args.n_threads)
        timings["warm_start"] = time.perf_counter() - t0
        before["acc_h"], before["acc_g"] = _evaluate(fmodel, head, eval_loader, device, amp)
        history: list = []
        prototypes, proto_names = torch.from_numpy(np.array(lib.vectors, dtype=np.float32)), list(lib.names)
    else:
        before, history, timings = ckpt["before"], ckpt["history"], {**timings, **ckpt["timings"]}
        prototypes, proto_names = ckpt["prototypes"], list(ckpt["prototype_names"])
        head = new_head(prototypes)
        model.load_state_dict(ckpt["model"])
        head.load_state_dict(ckpt["head"])
    _log(f"[before] acc(h)={before['acc_h']:.4f}  acc(g)={before['acc_g']:.4f}  IIS={before['iis']:.4f} "
         f"(probe {before['probe_accuracy']:.4f}, M={head.n_concepts}, k={head.k})")

    # ---- fine-tuning ---------------------------------------------------------------------
    criterion = InterpretabilityLoss(head, weight=args.weight or 1.0, detach_features=args.weight == 0)
    params = [*model.parameters(), *head.parameters()]
    opt = (torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
           if args.optimizer == "sgd" else torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        if ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
    steps = math.ceil(len(train_set) / args.batch_size)
    warmup = int(round(args.warmup * steps * args.epochs))
    start = len(history)
    stop = args.epochs if args.stop_after is None else min(args.epochs, start + args.stop_after)
    aug_gen = torch.Generator()
    for epoch in range(start, stop):
        t_ep = time.perf_counter()
        if args.refresh_every and epoch > 0 and epoch % args.refresh_every == 0:
            lib = library()
            head.set_prototypes(lib)
            prototypes, proto_names = torch.from_numpy(np.array(lib.vectors, dtype=np.float32)), list(lib.names)
            _log(f"epoch {epoch + 1}: prototypes refreshed from the current backbone")
        aug_gen.manual_seed(args.seed + 7919 + epoch)
        loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                             num_workers=args.workers,
                                             generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        model.train()
        if args.bn == "frozen":  # keep the pre-trained BatchNorm statistics
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        head.train()
        sums = np.zeros(5)  # CE h, CE g, hits h, hits g, n
        bar = None
        if args.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", leave=False)
        for i, (x, y) in enumerate(loader):
            for g in opt.param_groups:
                g["lr"] = _lr_at(epoch * steps + i, steps * args.epochs, args.lr, warmup)
            x, y = x.to(device), y.to(device)
            if args.augment:
                x = _augment(x, aug_gen)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                feats, logits = fmodel(x)
                parts = criterion(feats, logits, y, return_parts=True)
            if not torch.isfinite(parts.loss.detach()):
                raise FloatingPointError(f"the loss became {float(parts.loss.detach())} at epoch {epoch + 1}, step {i}; "
                                         "lower --lr or use --amp off")
            opt.zero_grad(set_to_none=True)
            scaler.scale(parts.loss).backward()
            scaler.step(opt)
            scaler.update()
            sums += [float(parts.ce_h) * len(y), float(parts.ce_g) * len(y), int((logits.argmax(1) == y).sum()),
                     int((parts.logits_g.argmax(1) == y).sum()), len(y)]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ce_h=f"{sums[0] / sums[4]:.3f}", ce_g=f"{sums[1] / sums[4]:.3f}")
        if bar is not None:
            bar.close()
        acc_h, acc_g = _evaluate(fmodel, head, eval_loader, device, amp)
        ce_h, ce_g, hits_h, hits_g = (float(v) for v in sums[:4] / sums[4])
        rec = {"epoch": epoch + 1, "loss": ce_h + args.weight * ce_g, "ce_h": ce_h, "ce_g": ce_g,
               "train_acc_h": hits_h, "train_acc_g": hits_g, "eval_acc_h": acc_h, "eval_acc_g": acc_g,
               "lr_end": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t_ep}
        history.append(rec)
        timings["train"] = timings.get("train", 0.0) + rec["seconds"]
        _log(f"epoch {epoch + 1}/{args.epochs}  loss {rec['loss']:.4f} (CE h {ce_h:.4f}, CE g {ce_g:.4f})  "
             f"eval acc(h)={acc_h:.4f} acc(g)={acc_g:.4f}  {rec['seconds']:.1f}s")
        torch.save({"epoch": epoch + 1, "config": config, "model": model.state_dict(), "head": head.state_dict(),
                    "optimizer": opt.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                    "history": history, "before": before, "prototypes": prototypes,
                    "prototype_names": proto_names, "rng": _rng_state(), "timings": timings},
                   out / (CHECKPOINT + ".tmp"))
        os.replace(out / (CHECKPOINT + ".tmp"), out / CHECKPOINT)
    if len(history) < args.epochs:
        _log(f"stopped after epoch {len(history)} of {args.epochs} (--stop-after); continue with --resume")
        return {"config": config, "before": before, "history": history, "complete": False}

    # ---- after ------------------------------------------------------------------------
    feats, lib = features("after")
    after = iis_of(feats, lib, "after")
    frozen = iis_of(feats, ConceptLibrary(prototypes.numpy(), names=proto_names, kind="prototype"), "frozen")
    after["acc_h"], after["acc_g"] = ((history[-1]["eval_acc_h"], history[-1]["eval_acc_g"]) if history
                                      else _evaluate(fmodel, head, eval_loader, device, amp))
    after["iis_frozen_prototypes"] = frozen["iis"]
    after["probe_accuracy_frozen_prototypes"] = frozen["probe_accuracy"]
    _log(f"[after]  acc(h)={after['acc_h']:.4f}  acc(g)={after['acc_g']:.4f}  IIS={after['iis']:.4f} "
         f"(probe {after['probe_accuracy']:.4f}; with the frozen training prototypes {frozen['iis']:.4f})")
    timings["total_this_invocation"] = time.perf_counter() - t_start
    summary = {
        "config": config,
        "model": f"{args.model} (" + (f"weights {args.weights}" if args.weights else
                                       "pretrained" if args.pretrained else "random init") + ")",
        "data": {"name": data_name, "n_classes": K, "n_train": len(tr), "n_eval": len(ev), "image_size": size},
        "concepts": {"n_concepts": head.n_concepts, "kept_per_sample": head.k, "sparsity": args.sparsity,
                     "mask": args.mask, "elements": args.elements},
        "loss": "CE(h(f), y) + weight * CE(g(mask_s(norm(f @ unit(P).T))), y)"
                + ("  [weight=0: backbone trained with CE(h) only; g on detached features]" if args.weight == 0
                   else ""),
        "before": before, "after": after, "history": history,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "complete": True,
        "versions": {"iis": __version__, "torch": torch.__version__},
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    if args.plot:
        plot_summary(summary, out / PLOT)
    _log(f"wrote {out / SUMMARY}" + (f" and {out / PLOT}" if args.plot else ""))
    return summary


def plot_summary(summary: dict, path: "str | os.PathLike[str]") -> None:
    """Plot the loss, the accuracies of h and g per epoch and the ARR curves before/after."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    hist, before, after = summary["history"], summary["before"], summary["after"]
    ep = [h["epoch"] for h in hist]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key, style in (("loss", "o-"), ("ce_h", "s--"), ("ce_g", "^--")):
        axes[0].plot(ep, [h[key] for h in hist], style, label={"loss": "total", "ce_h": "CE h", "ce_g": "CE g"}[key])
    for key, style, label in (("h", "o-", "h (model)"), ("g", "^-", "g (concepts)")):
        axes[1].plot([0, *ep], [before[f"acc_{key}"], *(h[f"eval_acc_{key}"] for h in hist)], style, label=label)
    for res, style, when in ((before, "o-", "before"), (after, "s-", "after")):
        axes[2].plot(res["sparsities"], res["arr"], style, label=f"{when} (IIS {res['iis']:.3f})")
    for ax, xl, yl, title in zip(axes, ("epoch", "epoch (0 = before)", "sparsity s"),
                                 ("training loss", "eval accuracy", "ARR"), ("loss", "accuracy", "accuracy retention")):
        ax.set(xlabel=xl, ylabel=yl, title=title)
        ax.legend()
    for ax in axes[:2]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{summary['model']} on {summary['data']['name']}, weight={summary['config']['weight']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
