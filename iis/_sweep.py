"""Sweeps: IIS over a grid of models, layers or checkpoints, datasets and libraries.

:func:`sweep` reads a spec (a TOML file or a dict, docs/sweep.md), extracts each
(model, layer or checkpoint, dataset) once into an on-disk cache of ``.npy`` files keyed
by a hash of everything that determines them, fits the dense probe once per unit (kept
in the cache beside the features, shared by the unit's libraries), scores every cell from
memory-mapped features and writes one JSON result per cell atomically, so that a killed
sweep resumes where it stopped. The table of results is a pandas DataFrame (``results.csv``, and
``results.parquet`` when pyarrow is installed). ``backend="ray"`` runs the extraction
and scoring as Ray tasks that exchange features through the cache directory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

__all__ = ["sweep", "load_spec"]

_CACHE_FORMAT = "iis.sweep.features/1"
_PROBE_FORMAT = "iis.sweep.probe/1"
_PROBE_OPTIONS = ("l2", "tol", "max_iter")  # the solver options the dense probe depends on
_PACKAGED = {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 2}  # ImageNet, offline
_TOP = {"out", "cache", "sparsities", "threads", "device", "batch_size", "seed", "solver", "models",
        "datasets", "libraries"}
_SOLVER = {"l2", "tol", "max_iter", "normalize", "mask", "keep"}
_MODEL = {"name", "source", "pretrained", "weights", "checkpoints", "layers", "pool", "image_size",
          "num_classes", "gpus", "label"}
_DATASET = {"name", "source", "path", "size", "n_per_class", "eval_fraction", "split_seed"}


# ----------------------------------------------------------------------------- spec
def load_spec(spec: Any) -> Dict[str, Any]:
    """A validated sweep spec with defaults filled in and paths made absolute.

    Parameters
    ----------
    spec : str, path or dict
        A TOML file (relative paths in it are relative to the file) or a dict of the
        same structure (relative paths relative to the working directory).
    """
    if isinstance(spec, dict):
        raw, base = dict(spec), os.getcwd()
    elif isinstance(spec, (str, os.PathLike)):
        path = os.fspath(spec)
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python < 3.11
            import tomli as tomllib
        with open(path, "rb") as f:
            try:
                raw = tomllib.load(f)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{path}: not valid TOML: {exc}") from None
        base = os.path.dirname(os.path.abspath(path))
    else:
        raise TypeError(f"spec must be a TOML path or a dict, got {type(spec).__name__}")
    _unknown(raw, _TOP, "the spec")
    from . import DEFAULT_GRID
    from ._validation import check_sparsities

    def absolute(p: Any, what: str) -> str:
        if not isinstance(p, str) or not p:
            raise ValueError(f"{what} must be a path (a non-empty string), got {p!r}")
        return os.path.normpath(os.path.join(base, os.path.expanduser(p)))

    out = absolute(raw.get("out", "sweep_out"), "out")
    s: Dict[str, Any] = {
        "out": out,
        "cache": absolute(raw["cache"], "cache") if "cache" in raw else os.path.join(out, "cache"),
        "sparsities": check_sparsities(raw.get("sparsities", DEFAULT_GRID)).tolist(),
        "threads": _int(raw.get("threads", 1), "threads"),
        "device": _str(raw.get("device", "auto"), "device"),
        "batch_size": _int(raw.get("batch_size", 64), "batch_size"),
        "seed": _int(raw.get("seed", 0), "seed", 0),
        "solver": dict(raw.get("solver", {})),
    }
    _unknown(s["solver"], _SOLVER, "[solver]")
    for key in ("models", "datasets", "libraries"):
        if not isinstance(raw.get(key), list) or not raw[key]:
            raise ValueError(f"the spec needs at least one [[{key}]] table")
    s["models"] = [_model_entry(m, absolute) for m in raw["models"]]
    s["datasets"] = [_dataset_entry(d, absolute) for d in raw["datasets"]]
    s["libraries"] = [_library_entry(lib, absolute) for lib in raw["libraries"]]
    for key in ("models", "datasets", "libraries"):
        labels = [e["label"] for e in s[key]]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"[[{key}]] labels must be distinct; repeated: {dup} (set label = ...)")
    return s


def _unknown(table: Any, allowed: set, where: str) -> None:
    if not isinstance(table, dict):
        raise TypeError(f"{where} must be a table, got {type(table).__name__}")
    bad = sorted(set(table) - allowed)
    if bad:
        raise ValueError(f"{where} has unknown keys {bad}; allowed: {sorted(allowed)}")


def _int(v: Any, name: str, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def _model_entry(m: Dict[str, Any], absolute) -> Dict[str, Any]:
    _unknown(m, _MODEL, "[[models]]")
    if not isinstance(m.get("name"), str) or not m["name"]:
        raise ValueError(f"[[models]] needs a name, got {m!r}")
    e = {"name": m["name"], "source": m.get("source", "timm"), "pretrained": bool(m.get("pretrained", False)),
         "pool": m.get("pool", "auto"), "image_size": m.get("image_size"), "num_classes": m.get("num_classes"),
         "gpus": float(m.get("gpus", 0)), "label": m.get("label", m["name"])}
    if e["source"] not in ("timm", "torchvision", "packaged"):
        raise ValueError(f"model {m['name']!r}: source must be timm, torchvision or packaged, got {e['source']!r}")
    if e["source"] == "packaged" and e["name"] not in _PACKAGED:
        raise ValueError(f"packaged models are {', '.join(_PACKAGED)}, got {e['name']!r}")
    if "weights" in m and "checkpoints" in m:
        raise ValueError(f"model {m['name']!r}: give weights or checkpoints, not both")
    e["checkpoints"] = [absolute(p, "a checkpoint") for p in m.get("checkpoints", [])] or [
        absolute(m["weights"], "weights") if "weights" in m else None]
    if e["pretrained"] and e["checkpoints"] != [None]:
        raise ValueError(f"model {m['name']!r}: pretrained = true excludes weights/checkpoints files")
    layers = m.get("layers", [""])
    if not isinstance(layers, list) or not layers or not all(isinstance(x, str) for x in layers):
        raise ValueError(f"model {m['name']!r}: layers must be a list of module names ('' = the default)")
    e["layers"] = layers
    return e


def _dataset_entry(d: Dict[str, Any], absolute) -> Dict[str, Any]:
    _unknown(d, _DATASET, "[[datasets]]")
    src = d.get("source")
    if src not in ("digits", "imagefolder", "npz"):
        raise ValueError(f"[[datasets]] source must be digits, imagefolder or npz, got {src!r}")
    e = {"source": src, "name": d.get("name", src), "eval_fraction": float(d.get("eval_fraction", 0.3)),
         "split_seed": _int(d.get("split_seed", 0), "split_seed", 0), "n_per_class": d.get("n_per_class")}
    e["label"] = e["name"]
    if src == "digits":
        e["size"] = _int(d.get("size", 32), "size", 8)
    else:
        e["path"] = absolute(d.get("path"), f"dataset {e['name']!r}: path")
    return e


def _library_entry(lib: Dict[str, Any], absolute) -> Dict[str, Any]:
    if not isinstance(lib, dict):
        raise TypeError(f"[[libraries]] must be a table, got {type(lib).__name__}")
    kind = lib.get("kind")
    if kind not in _LIBRARY:
        raise ValueError(f"[[libraries]] kind must be one of {', '.join(_LIBRARY)}, got {kind!r}")
    where = f"[[libraries]] kind = {kind!r}"
    _unknown(lib, _LIBRARY[kind], where)
    e: Dict[str, Any] = {"kind": kind, "seed": _int(lib.get("seed", 0), f"{where}: seed", 0)}
    if "n_concepts" in lib or kind != "infodisent":  # InfoDisent: every channel unless given
        e["n_concepts"] = _int(lib.get("n_concepts", 200), f"{where}: n_concepts")
    else:
        e["n_concepts"] = None
    for key, (default, check) in _OPTIONS[kind].items():
        e[key] = check(lib.get(key, default), f"{where}: {key}")
    if kind in ("prototype", "cluster", "end2end"):
        e.update(elements=lib.get("elements", "patches"), per_class=lib.get("per_class"))
        if e["elements"] == "patches":
            e["grid"] = _int(lib.get("grid", 4), f"{where}: grid")
        elif e["elements"] == "segments":
            e["n_segments"] = [int(v) for v in lib.get("n_segments", (10, 20, 30))]
        elif e["elements"] != "features":
            raise ValueError(f"{where}: elements must be patches, segments or features, got {e['elements']!r}")
        label = f"{kind}:{e['n_concepts']}/{e['elements']}"
    elif kind == "text":
        if ("concepts" in lib) == ("concepts_file" in lib):
            raise ValueError(f"{where} needs concepts = [...] or concepts_file = PATH (one of them)")
        from .concepts import clean_concepts, load_concepts

        if "concepts" in lib:
            given = lib["concepts"]
            if not isinstance(given, list) or not all(isinstance(c, str) for c in given):
                raise ValueError(f"{where}: concepts must be a list of strings, got {given!r}")
            e["concepts"] = clean_concepts(given)
        else:
            path = absolute(lib["concepts_file"], f"{where}: concepts_file")
            if not os.path.isfile(path):
                raise ValueError(f"{where}: concepts_file {path} does not exist")
            e["concepts"] = load_concepts(path)  # its content, not its name, is in the keys
        if not e["concepts"]:
            raise ValueError(f"{where}: no concept given")
        if not isinstance(lib.get("clip_model"), str) or not lib["clip_model"]:
            raise ValueError(f"{where} needs clip_model = an open_clip architecture name (e.g. 'ViT-B-32')")
        e["clip_model"] = lib["clip_model"]
        e["clip_weights"] = absolute(lib["clip_weights"], f"{where}: clip_weights") if "clip_weights" in lib else None
        if e["clip_weights"] is not None and not os.path.isfile(e["clip_weights"]):
            raise ValueError(f"{where}: clip_weights {e['clip_weights']} does not exist")
        if e["template"].count("{}") != 1:
            raise ValueError(f"{where}: template must contain '{{}}' exactly once, got {e['template']!r}")
        label = f"text:{len(e['concepts'])}"
    else:
        from ._infodisent import InfoDisent

        InfoDisent(2, e["parametrization"], steps=e["steps"], batch_size=e["batch_size"], lr=e["lr"])  # checks
        label = f"infodisent:{e['n_concepts'] or 'all'}"
    if kind == "cluster":
        e["max_elements"] = _int(lib.get("max_elements", 20000), f"{where}: max_elements")
    e["label"] = lib.get("label", label)
    return e


def _float(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def _str(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{name} must be a string, got {v!r}")
    return v


def _count(v: Any, name: str) -> int:
    return _int(v, name, 0)


# the learned libraries' options: default and type check (ranges are checked where they are used)
_OPTIONS = {
    "prototype": {}, "cluster": {},
    "end2end": {"temperature": (0.1, _float), "sparsity": (0.5, _float), "steps": (2000, _count), "lr": (0.05, _float),
                "l2": (1e-4, _float), "holdout": (0.1, _float), "eval_every": (50, _int), "patience": (10, _int)},
    "text": {"template": ("{}", _str), "top5_cutoff": (0.25, _float), "interpretability_cutoff": (0.45, _float),
             "steps": (1000, _count), "lr": (1e-3, _float), "holdout": (0.1, _float), "eval_every": (50, _int),
             "patience": (1, _int)},
    "infodisent": {"parametrization": ("cayley", _str), "steps": (1000, _count), "batch_size": (64, _int),
                   "lr": (0.01, _float)},
}
_ELEMENTS = {"elements", "grid", "n_segments", "per_class"}
_LIBRARY = {  # the keys each kind takes
    "prototype": {"kind", "label", "seed", "n_concepts"} | _ELEMENTS,
    "cluster": {"kind", "label", "seed", "n_concepts", "max_elements"} | _ELEMENTS,
    "end2end": {"kind", "label", "seed", "n_concepts"} | _ELEMENTS | set(_OPTIONS["end2end"]),
    "text": {"kind", "label", "seed", "concepts", "concepts_file", "clip_model", "clip_weights"} | set(_OPTIONS["text"]),
    "infodisent": {"kind", "label", "seed", "n_concepts"} | set(_OPTIONS["infodisent"]),
}


# --------------------------------------------------------------------------- identity
def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _file_hash(path: str) -> str:
    """sha256 of a file's content (what a weights file or an .npz dataset *is*)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _image_folder(path: str) -> Tuple[List[str], List[str]]:
    """(files, class names) of a folder of class folders, sorted."""
    if not os.path.isdir(path):
        raise ValueError(f"image folder {path} does not exist")
    exts = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
    files, labels = [], []
    for cls in sorted(c for c in os.listdir(path) if os.path.isdir(os.path.join(path, c))):
        for fn in sorted(os.listdir(os.path.join(path, cls))):
            if fn.lower().endswith(exts):
                files.append(os.path.join(path, cls, fn))
                labels.append(cls)
    if not files:
        raise ValueError(f"image folder {path} holds no images in class sub-folders")
    return files, labels


def _dataset_identity(d: Dict[str, Any]) -> Dict[str, Any]:
    ident = {k: d[k] for k in ("source", "eval_fraction", "split_seed", "n_per_class")}
    if d["source"] == "digits":
        import sklearn

        ident.update(size=d["size"], sklearn=sklearn.__version__)
    elif d["source"] == "npz":
        ident.update(path=d["path"], sha256=_file_hash(d["path"]))
    else:
        files, _ = _image_folder(d["path"])
        st = [(os.path.relpath(f, d["path"]), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
        ident.update(path=d["path"], files=_digest(st))
    return ident


def _model_identity(m: Dict[str, Any], checkpoint: Optional[str], seed: int) -> Dict[str, Any]:
    ident = {k: m[k] for k in ("name", "source", "pretrained", "num_classes")}
    if checkpoint is not None:
        ident["weights_sha256"] = _file_hash(checkpoint)
    elif m["source"] == "packaged":
        from .torch._models import _packaged_path

        ident["weights_sha256"] = _file_hash(_packaged_path(_PACKAGED[m["name"]]))
    elif not m["pretrained"]:
        ident["init_seed"] = seed  # random weights, seeded
    return ident


# ---------------------------------------------------------------------------- data
def _load_dataset(d: Dict[str, Any]) -> Dict[str, Any]:
    """Train/eval images (uint8 arrays, or file paths for an image folder) and labels."""
    from .datasets import load_digits_images, select_per_class, train_eval_split

    if d["source"] == "digits":
        images, labels = load_digits_images(size=d["size"])
    elif d["source"] == "npz":
        from ._validation import read_npz

        z = read_npz(d["path"], "dataset")
        if "images" not in z or "labels" not in z:
            raise ValueError(f"dataset {d['path']} needs 'images' (N, H, W[, 3]) and 'labels' (N,) arrays")
        images, labels = z["images"], z["labels"]
        if labels.dtype.kind == "S":  # the shared probe's record (JSON) holds the classes
            raise ValueError(f"dataset {d['path']}: 'labels' are bytes ({labels.dtype}); store them as str")
    else:
        files, labels = _image_folder(d["path"])
        images, labels = np.asarray(files), np.asarray(labels)
    if d["n_per_class"] is not None:
        keep = select_per_class(labels, d["n_per_class"], seed=d["split_seed"])
        images, labels = images[keep], labels[keep]
    tr, ev = train_eval_split(labels, d["eval_fraction"], seed=d["split_seed"])
    return {"train": (images[tr], labels[tr]), "eval": (images[ev], labels[ev]), "files": d["source"] == "imagefolder"}


def _read_images(items: Any, files: bool) -> List[np.ndarray]:
    if not files:
        return list(items)
    from PIL import Image

    return [np.array(Image.open(p).convert("RGB")) for p in items]


# ---------------------------------------------------------------------------- units
def _units(spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Extraction units (model variant x layer x dataset) with their cache keys, and cells."""
    units = []
    data_ids = {d["label"]: _dataset_identity(d) for d in spec["datasets"]}
    clip_ids = [_clip_identity(lib, spec["seed"]) if lib["kind"] == "text" else None for lib in spec["libraries"]]
    for m in spec["models"]:
        for ck in m["checkpoints"]:
            mid = _model_identity(m, ck, spec["seed"])
            for layer in m["layers"]:
                for d in spec["datasets"]:
                    base = {"format": _CACHE_FORMAT, "model": mid, "layer": layer, "pool": m["pool"],
                            "image_size": m["image_size"], "data": data_ids[d["label"]]}
                    keys = {"train": _digest(dict(base, split="train")), "eval": _digest(dict(base, split="eval"))}
                    needs = []  # per library, the names of the cache entries it reads besides train and eval
                    for lib, clip_id in zip(spec["libraries"], clip_ids):
                        extra = _library_keys(lib, base, clip_id)
                        keys.update(extra)
                        needs.append(sorted(extra))
                    units.append({"model": m, "checkpoint": ck, "layer": layer, "dataset": d, "keys": keys,
                                  "needs": needs, "data_id": data_ids[d["label"]]})
    return units


def _library_keys(lib: Dict[str, Any], base: Dict[str, Any], clip_id: Optional[Dict[str, Any]]) -> Dict[str, str]:
    """The cache entries a library is built from (name: key), besides the train and eval features:
    element features; CLIP embeddings of the train images and of the concepts; spatial train maps."""
    if lib["kind"] == "text":
        tag = _digest(clip_id)[:12]
        return {"clip-images-" + tag: _digest({"format": _CACHE_FORMAT, "clip": clip_id, "data": base["data"],
                                                "split": "train"}),
                "clip-text-" + _digest([clip_id, lib["concepts"], lib["template"]])[:12]:
                    _digest({"format": _CACHE_FORMAT, "clip": clip_id, "concepts": lib["concepts"],
                             "template": lib["template"]})}
    if lib["kind"] == "infodisent":
        return {"maps-train": _digest(dict(base, split="train", spatial=True))}
    if lib["elements"] == "features":
        return {}
    return {_elements_tag(lib): _digest(dict(base, elements=_elements_params(lib)))}


def _clip_identity(lib: Dict[str, Any], seed: int) -> Dict[str, Any]:
    ident: Dict[str, Any] = {"clip_model": lib["clip_model"]}
    if lib["clip_weights"] is not None:
        ident["weights_sha256"] = _file_hash(lib["clip_weights"])
    else:
        ident["init_seed"] = seed  # random weights, seeded
    return ident


def _elements_params(lib: Dict[str, Any]) -> Dict[str, Any]:
    return {k: lib[k] for k in ("elements", "grid", "n_segments", "per_class", "seed") if k in lib}


def _elements_tag(lib: Dict[str, Any]) -> str:
    return "elements-" + _digest(_elements_params(lib))[:12]


def _cells(spec: Dict[str, Any], units: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    cells = []
    solver = {"sparsities": spec["sparsities"], "threads": spec["threads"], **spec["solver"]}
    for ui, u in enumerate(units):
        for li, lib in enumerate(spec["libraries"]):
            lib_id = {k: v for k, v in lib.items() if k != "label"}
            feats = [u["keys"]["train"], u["keys"]["eval"]] + [u["keys"][n] for n in u["needs"][li]]
            row = {"model": u["model"]["label"], "checkpoint": _ck_name(u["checkpoint"]),
                   "layer": u["layer"] or "default", "dataset": u["dataset"]["label"], "library": lib["label"],
                   "library_kind": lib["kind"], "n_concepts": lib["n_concepts"]}
            # the names are part of the id: two entries with the same content are two rows
            cid = _digest({"features": feats, "library": lib_id, "solver": solver, "row": row})[:20]
            cells.append({"id": cid, "unit": ui, "library": lib, "needs": u["needs"][li], "row": row})
    return cells


def _ck_name(path: Optional[str]) -> str:
    return "" if path is None else os.path.basename(path)


# ------------------------------------------------------------------------ extraction
def _build_model(m: Dict[str, Any], checkpoint: Optional[str], seed: int):
    import torch

    torch.manual_seed(seed)  # random-init models are part of the cache key through the seed
    if m["source"] == "packaged":
        from .torch import efficientnet_lite

        model = efficientnet_lite(_PACKAGED[m["name"]], True, num_classes=m["num_classes"] or 1000)
    elif m["source"] == "torchvision":
        import torchvision

        kw = {} if m["num_classes"] is None else {"num_classes": m["num_classes"]}
        model = torchvision.models.get_model(m["name"], weights="DEFAULT" if m["pretrained"] else None, **kw)
    else:
        from .torch import load_model

        return load_model(m["name"], m["pretrained"], num_classes=m["num_classes"], weights=checkpoint)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state, strict=True)
    return model.eval()


def _extract(model, images, files: bool, layer: str, pool: str, cfg: Dict[str, Any], batch_size: int,
             device: str, out: str, spatial: bool = False) -> None:
    """Features of uint8 images (or image files) written to the .npy file ``out``;
    ``spatial``: the maps before pooling, ``(n, H*W, d)``."""
    from .torch import ImageDataset, extract_features

    class Files(ImageDataset):
        def __getitem__(self, i):
            return self._convert(_read_images([self.images[i]], True)[0], i)

    ds = (Files if files else ImageDataset)(list(images), size=cfg["size"], mean=cfg["mean"], std=cfg["std"])
    extract_features(model, ds, layer or None, batch_size=batch_size, device=device, progress=False,
                     out=out, pool="auto" if spatial else pool, spatial=spatial)


def _clip_extract(lib: Dict[str, Any], seed: int, what: str, data: Dict[str, Any], batch_size: int,
                  device: str, out: str) -> None:
    """CLIP embeddings (``iis.torch.clip_embeddings``) of the train images (``what="images"``)
    or of the library's concepts (``what="text"``), written to the .npy file ``out``."""
    import open_clip
    import torch
    from PIL import Image

    from .torch import clip_embeddings

    torch.manual_seed(seed)  # random weights when no clip_weights are given, seeded
    model, _, preprocess = open_clip.create_model_and_transforms(lib["clip_model"], pretrained=lib["clip_weights"])
    tokenizer = open_clip.get_tokenizer(lib["clip_model"])
    images = data["train"][0] if what == "images" else data["train"][0][:1]  # text: one image, unused
    items = list(images) if data["files"] else [Image.fromarray(np.asarray(a)) for a in images]
    img, txt = clip_embeddings(model, items, lib["concepts"] if what == "text" else lib["concepts"][:1],
                               tokenizer=tokenizer, preprocess=preprocess, template=lib["template"],
                               batch_size=batch_size, device=device)
    np.save(out, img if what == "images" else txt)


def _device(spec_device: str, gpu_ids: List[Any]) -> str:
    """The torch device extraction runs on: ``spec_device``, or for ``"auto"`` cuda when
    this process holds a GPU (on Ray: when the task was given one), else the CPU."""
    import torch

    if spec_device != "auto":
        return spec_device
    if gpu_ids and not torch.cuda.is_available():
        raise RuntimeError(f"this Ray task was given GPU(s) {gpu_ids} but torch {torch.__version__} sees no CUDA "
                           "device (a CPU-only build, or no driver on this node): install a CUDA build of torch "
                           "on the GPU nodes, or set device = \"cpu\" in the spec to extract on the CPU")
    return "cuda" if torch.cuda.is_available() else "cpu"


def extract_unit(spec: Dict[str, Any], unit: Dict[str, Any], gpu_ids: Optional[List[Any]] = None) -> Dict[str, Any]:
    """Fill the cache with a unit's train, eval, element, CLIP and map features (those missing).

    ``gpu_ids``: the GPUs Ray gave this task (``device = "auto"`` then means cuda).
    Returns ``{"extracted": [names], "seconds": float}``.
    """
    cache = spec["cache"]
    os.makedirs(cache, exist_ok=True)
    missing = [k for k, key in unit["keys"].items() if not os.path.exists(_cache_path(cache, key))]
    t0 = time.perf_counter()
    if not missing:
        return {"extracted": [], "seconds": 0.0}
    import torch

    from .torch import data_config

    device = _device(spec["device"], gpu_ids or [])
    threads = torch.get_num_threads()
    torch.set_num_threads(spec["threads"])  # the same bits on every backend
    try:
        m = unit["model"]
        data = _load_dataset(unit["dataset"])
        model = cfg = None
        owner = {n: lib for lib, names in zip(spec["libraries"], unit["needs"]) for n in names}
        for name in missing:
            path = _cache_path(cache, unit["keys"][name])
            if name.startswith("clip-"):
                what = "images" if name.startswith("clip-images-") else "text"
                _atomic(path, lambda tmp: _clip_extract(owner[name], spec["seed"], what, data, spec["batch_size"],
                                                        device, tmp))
                continue
            if model is None:
                model = _build_model(m, unit["checkpoint"], spec["seed"])
                cfg = data_config(model)
                if m["image_size"] is not None:
                    cfg["size"] = int(m["image_size"])
            if name in ("train", "eval", "maps-train"):
                (images, labels), files = data["eval" if name == "eval" else "train"], data["files"]
            else:
                (images, labels), files = _element_images(owner[name], data, cache, unit["data_id"]), False
            # the labels first: the features' file is the mark that the entry is complete
            _atomic(path[:-4] + ".labels.npy", lambda tmp: np.save(tmp, np.asarray(labels)))
            _atomic(path, lambda tmp: _extract(model, images, files, unit["layer"], m["pool"], cfg,
                                               spec["batch_size"], device, tmp, spatial=name == "maps-train"))
    finally:
        torch.set_num_threads(threads)
    return {"extracted": missing, "seconds": time.perf_counter() - t0}


def _element_images(lib: Dict[str, Any], data: Dict[str, Any], cache: str,
                    data_id: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    """The elements' uint8 images and labels, cut once per dataset (not per model or layer)
    and kept in the cache."""
    path = _cache_path(cache, _digest({"format": _CACHE_FORMAT, "data": data_id,
                                       "element_images": _elements_params(lib)}))
    if not os.path.exists(path):
        images, labels = _cut_elements(lib, data)
        _atomic(path[:-4] + ".labels.npy", lambda tmp: np.save(tmp, labels))
        _atomic(path, lambda tmp: np.save(tmp, images))
    return np.load(path), np.load(path[:-4] + ".labels.npy")  # writable: torch.from_numpy wants that


def _cut_elements(lib: Dict[str, Any], data: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
    from . import elements

    images, labels = data["train"]
    if lib["per_class"] is not None:
        from .datasets import select_per_class

        keep = select_per_class(labels, lib["per_class"], seed=lib["seed"])
        images, labels = images[keep], labels[keep]
    imgs = _read_images(images, data["files"])
    if lib["elements"] == "patches":
        el = elements.patches(imgs, labels, grid=lib["grid"])
    else:
        el = elements.segments(imgs, labels, n_segments=lib["n_segments"], seed=lib["seed"])
    return el.images, el.labels


def _cache_path(cache: str, key: str) -> str:
    return os.path.join(cache, key[:2], key + ".npy")


def _atomic(path: str, write) -> None:
    """Call ``write(tmp)`` on a temporary name next to ``path``, then rename it to ``path``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix="." + os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------- scoring
def _load_cached(cache: str, key: str, labels: bool = True):
    """The memory-mapped features of a cache entry, and its labels (unless ``labels=False``)."""
    path = _cache_path(cache, key)
    if not os.path.exists(path):
        raise FileNotFoundError(f"features {path} are not in the cache (their extraction failed)")
    x = np.load(path, mmap_mode="r")
    return (x, np.load(path[:-4] + ".labels.npy")) if labels else x


def _versions() -> Dict[str, str]:
    from . import __version__

    from importlib import metadata

    out = {"iis_version": __version__, "numpy_version": np.__version__}
    for dist in ("torch", "timm"):  # installed versions, whether this process imported them or not
        try:
            out[f"{dist}_version"] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[f"{dist}_version"] = ""
    return out


def run_cell(spec: Dict[str, Any], cell: Dict[str, Any], unit: Dict[str, Any],
             extracted: Optional[Dict[str, Any]] = None, progress: Any = None) -> Dict[str, Any]:
    """Score one cell and write its result to ``<out>/cells/<id>.json`` atomically.

    Its features are extracted first unless ``extracted`` (what :func:`extract_unit`
    returned elsewhere, or ``{"error": message}``) says that was done. The library is
    built from train features (and train elements, maps or CLIP embeddings) only. The
    dense probe is the unit's shared one (:func:`_shared_probe`). Errors are recorded
    in the result, not raised. ``progress`` goes to :func:`iis.probe` and :func:`iis.score`."""
    from . import score

    row: Dict[str, Any] = {"cell_id": cell["id"], **cell["row"], "status": "ok", "error": ""}
    t0 = time.perf_counter()
    try:
        ext = extract_unit(spec, unit) if extracted is None else extracted
        row.update({k: ext[k] for k in ("ray_extract", "ray_score") if k in ext})
        if ext.get("error"):
            raise RuntimeError(ext["error"])
        row["time_extract"] = ext["seconds"]
        ftr, ytr = _load_cached(spec["cache"], unit["keys"]["train"])
        fev, yev = _load_cached(spec["cache"], unit["keys"]["eval"])
        probe, row["time_probe"] = _shared_probe(spec, unit, progress)
        t1 = time.perf_counter()
        library, n_elements = _build_library(spec, cell, unit, ftr, ytr)
        row["time_library"] = time.perf_counter() - t1
        res = score(ftr, ytr, fev, yev, library, sparsities=spec["sparsities"], n_threads=spec["threads"],
                    progress=progress, probe=probe, **spec["solver"])
        row.update(n_concepts=library.n_concepts, probe_accuracy=res.probe_accuracy, iis=res.iis,
                   iis_normalized=res.iis_normalized, n_train=res.n_train, n_eval=res.n_eval,
                   n_classes=res.n_classes, dim=int(ftr.shape[1]), n_elements=n_elements,
                   time_score=res.timings["total"])
        row.update({f"arr@{s:g}": float(a) for s, a in zip(res.sparsities, res.arr)})
    except Exception as exc:  # recorded; the other cells go on
        row.update(status="error", error=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc(limit=4))
    row["time_total"] = time.perf_counter() - t0
    row.update(_versions())
    path = os.path.join(spec["out"], "cells", cell["id"] + ".json")
    _atomic(path, lambda tmp: _write_text(tmp, json.dumps(row, indent=1)))
    return row


def _probe_path(spec: Dict[str, Any], unit: Dict[str, Any]) -> str:
    """Where a unit's dense probe is kept: next to its features, under a key of everything it
    depends on (the train and eval features' keys, the probe's solver options, threads and
    kernels), so that a changed input or option is a new probe, never a stale one."""
    from ._blas import kernels

    key = _digest({"format": _PROBE_FORMAT, "train": unit["keys"]["train"], "eval": unit["keys"]["eval"],
                   "solver": {k: spec["solver"][k] for k in _PROBE_OPTIONS if k in spec["solver"]},
                   "threads": spec["threads"], "kernels": kernels()})
    return os.path.join(spec["cache"], key[:2], key + ".probe.json")


def _shared_probe(spec: Dict[str, Any], unit: Dict[str, Any], progress: Any = None):
    """(ProbeResult, seconds it took) of a unit's features: fitted once (:func:`iis.probe`) and
    kept in the cache, then shared by every library's cell of the unit, on any backend."""
    from . import ProbeResult, probe

    path = _probe_path(spec, unit)
    if not os.path.exists(path):
        ftr, ytr = _load_cached(spec["cache"], unit["keys"]["train"])
        fev, yev = _load_cached(spec["cache"], unit["keys"]["eval"])
        t0 = time.perf_counter()
        p = probe(ftr, ytr, fev, yev, n_threads=spec["threads"], progress=progress,
                  **{k: spec["solver"][k] for k in _PROBE_OPTIONS if k in spec["solver"]})
        rec = {"format": _PROBE_FORMAT, "seconds": time.perf_counter() - t0, "probe": dataclasses.asdict(p)}
        _atomic(path, lambda tmp: _write_text(tmp, json.dumps(rec, indent=1)))
    with open(path) as f:  # what was stored, also right after fitting: the same probe on every run
        rec = json.load(f)
    return ProbeResult(**dict(rec["probe"], classes=tuple(rec["probe"]["classes"]))), rec["seconds"]


def _build_library(spec: Dict[str, Any], cell: Dict[str, Any], unit: Dict[str, Any], ftr: np.ndarray,
                   ytr: np.ndarray):
    """A cell's concept library, fitted on train data only, and its number of elements
    (0 for text and InfoDisent, which have none)."""
    from . import ConceptLibrary, InfoDisent

    lib, cache, nt = cell["library"], spec["cache"], spec["threads"]
    kind, got = lib["kind"], {n: unit["keys"][n] for n in cell["needs"]}
    opts = {k: lib[k] for k in _OPTIONS[kind] if k != "template"}
    if kind == "text":
        img = next(_load_cached(cache, key, labels=False) for n, key in got.items() if n.startswith("clip-images-"))
        txt = next(_load_cached(cache, key, labels=False) for n, key in got.items() if n.startswith("clip-text-"))
        return ConceptLibrary.text(lib["concepts"], ftr, img, txt, seed=lib["seed"], n_threads=nt, **opts), 0
    if kind == "infodisent":
        maps, _ = _load_cached(cache, got["maps-train"])
        classes = np.unique(ytr)
        model = InfoDisent(len(classes), seed=lib["seed"], n_threads=nt, **opts)
        basis = ConceptLibrary.from_infodisent(model.fit(maps, np.searchsorted(classes, ytr)))
        if lib["n_concepts"] is None or lib["n_concepts"] >= basis.n_concepts:
            return basis, 0
        # the n_concepts channels the head weighs most, in channel order
        return basis.subset(np.sort(np.argsort(-model.coef_.sum(axis=0), kind="stable")[:lib["n_concepts"]])), 0
    el, ely = (ftr, ytr) if not got else _load_cached(cache, next(iter(got.values())))
    if kind == "prototype":
        library = ConceptLibrary.prototype(el, ely, n_concepts=lib["n_concepts"], seed=lib["seed"])
    elif kind == "cluster":
        library = ConceptLibrary.cluster(el, n_concepts=lib["n_concepts"], seed=lib["seed"],
                                         max_elements=lib["max_elements"], element_labels=ely, n_threads=nt)
    else:
        library = ConceptLibrary.end2end(el, ftr, ytr, n_concepts=lib["n_concepts"], seed=lib["seed"],
                                         n_threads=nt, **opts)
    return library, int(el.shape[0])


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _done(spec: Dict[str, Any], cell: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    path = os.path.join(spec["out"], "cells", cell["id"] + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        row = json.load(f)
    return row if row.get("status") == "ok" else None  # failed cells are tried again


class _Progress:
    every = 2.0  # seconds between the lines of a running cell's fits

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.total, self.done, self.failed, self.enabled = total, done, 0, enabled
        self.start_done, self.t0 = done, time.perf_counter()
        self.show()

    def add(self, row: Dict[str, Any]) -> None:
        self.done += 1
        self.failed += row["status"] != "ok"
        self.show()

    def cell(self, cell: Dict[str, Any]) -> Optional[Callable[..., None]]:
        """The running cell's progress for :func:`iis.score`: its fits' lines, throttled."""
        if not self.enabled:
            return None
        from ._api import _ProgressPrinter

        r = cell["row"]
        return _ProgressPrinter(f"[iis sweep] cell {self.done + 1}/{self.total} "
                                f"{r['model']}/{r['layer']}/{r['dataset']}/{r['library']}:", self.every,
                                throttle_ends=True)

    def show(self) -> None:
        if not self.enabled:
            return
        el = time.perf_counter() - self.t0
        n = self.done - self.start_done
        eta = f"{el / n * (self.total - self.done):.0f}s" if n else "?"
        fail = f", {self.failed} failed" if self.failed else ""
        sys.stderr.write(f"[iis sweep] {self.done}/{self.total} cells done{fail}, {el:.0f}s, ETA {eta}\n")
        sys.stderr.flush()


def sweep(spec: Any, *, backend: str = "local", ray_address: Optional[str] = None,
          progress: bool = True):
    """Run a sweep: every (model, layer or checkpoint, dataset, library) cell of ``spec``.

    Cells already done (a result file in ``<out>/cells``) are skipped; each finished cell
    writes its result atomically, so a sweep killed at any moment and run again redoes
    only unfinished cells (and those that failed). Ctrl-C stops after the running cell's
    result is written or discarded whole.

    Parameters
    ----------
    spec : str, path or dict
        Sweep spec (docs/sweep.md), see :func:`load_spec`.
    backend : {"local", "ray"}
        ``"ray"`` runs extraction and scoring as Ray tasks (``pip install "iis[ray]"``).
    ray_address : str, optional
        Cluster to connect to (``"auto"`` or ``"ray://host:10001"``); default: the Ray
        session already initialised in this process, or a new local one.
    progress : bool
        Print cells done/total and the estimated time left to stderr and, with the
        local backend, the running cell's fits (ratio or probe, L-BFGS iteration,
        objective) every 2 s.

    Returns
    -------
    pandas.DataFrame
        One row per cell, in spec order; also written to ``<out>/results.csv`` (and
        ``results.parquet`` when pyarrow is installed).
    """
    s = load_spec(spec)
    if backend not in ("local", "ray"):
        raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
    units = _units(s)
    cells = _cells(s, units)
    rows: Dict[str, Dict[str, Any]] = {}
    for c in cells:
        row = _done(s, c)
        if row is not None:
            rows[c["id"]] = row
    todo = [c for c in cells if c["id"] not in rows]
    prog = _Progress(len(cells), len(rows), progress)
    try:
        if backend == "local":
            for c in todo:
                rows[c["id"]] = run_cell(s, c, units[c["unit"]], progress=prog.cell(c))
                prog.add(rows[c["id"]])
        else:
            for row in run_ray(s, units, todo, ray_address):
                rows[row["cell_id"]] = row
                prog.add(row)
    except KeyboardInterrupt:
        sys.stderr.write(f"[iis sweep] interrupted: {prog.done}/{prog.total} cells done; "
                         "run the same sweep again to finish\n")
        raise
    return _table(s, [rows[c["id"]] for c in cells])


def _table(spec: Dict[str, Any], rows: List[Dict[str, Any]]):
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is in the sweep extra
        raise ImportError('sweeps need pandas: pip install "iis[sweep]"') from None
    df = pd.DataFrame([{k: v for k, v in r.items() if k != "traceback"} for r in rows])
    first = ["model", "checkpoint", "layer", "dataset", "library", "library_kind", "n_concepts", "status",
             "probe_accuracy", "iis", "iis_normalized"]
    arr = [c for c in df.columns if c.startswith("arr@")]
    df = df[[c for c in first if c in df] + arr + [c for c in df.columns if c not in first and c not in arr]]
    csv = os.path.join(spec["out"], "results.csv")
    _atomic(csv, lambda tmp: df.to_csv(tmp, index=False))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        _atomic(csv[:-4] + ".parquet", lambda tmp: df.to_parquet(tmp, index=False))
    return df


# ----------------------------------------------------------------------------- the Ray backend
# (pip install "iis[ray]"). One extraction task per (model, layer or checkpoint, dataset)
# asks for the model's gpus; when it has filled the shared cache, one probe task per dense
# probe fits it into the cache, then the unit's cells run as scoring tasks; both ask for
# `threads` CPUs and the memory their features need. Features
# travel through the cache directory (which every node must see at the same path), never
# through the driver; tasks return only the small result rows, which record what Ray gave
# each task (columns ray_extract and ray_score). A request that no node of the cluster can
# meet is an error, not a task pending forever.
_MEMORY_SLACK = 256 << 20  # interpreter, library and solver state besides the features


def _placement() -> str:
    """What Ray gave the running task: its resources and GPU ids (JSON)."""
    import ray

    return json.dumps({"resources": ray.get_runtime_context().get_assigned_resources(),
                       "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}, sort_keys=True)


def _extract_task(spec: Dict[str, Any], unit: Dict[str, Any]) -> Dict[str, Any]:
    import ray

    where = {"ray_extract": _placement()}
    try:
        out = extract_unit(spec, unit, gpu_ids=[str(g) for g in ray.get_gpu_ids()])
    except Exception as exc:  # reported by every cell of the unit
        return {"error": f"feature extraction failed: {type(exc).__name__}: {exc}", **where}
    out["bytes"] = sum(os.path.getsize(_cache_path(spec["cache"], k)) for k in unit["keys"].values())
    return {**out, **where}


def _score_task(spec: Dict[str, Any], cell: Dict[str, Any], unit: Dict[str, Any],
                extracted: Dict[str, Any]) -> Dict[str, Any]:
    return run_cell(spec, cell, unit, dict(extracted, ray_score=_placement()))


def _node_with(nodes: List[Dict[str, Any]], need: Dict[str, float]) -> Optional[Dict[str, float]]:
    """The resources of the first alive node that meets ``need`` (None when none does)."""
    for n in nodes:
        have = n.get("Resources", {})
        if n.get("Alive") and all(have.get(k, 0.0) >= v for k, v in need.items() if v):
            return have
    return None


def _check_feasible(nodes: List[Dict[str, Any]], spec: Dict[str, Any], units: List[Dict[str, Any]]) -> None:
    """Raise when an extraction task asks for more CPUs or GPUs than any node of the cluster
    has: Ray would keep it pending forever."""
    for m in {id(u["model"]): u["model"] for u in units}.values():
        need = {"CPU": float(spec["threads"]), "GPU": m["gpus"]}
        if _node_with(nodes, need) is None:
            alive = [{k: n["Resources"].get(k, 0.0) for k in ("CPU", "GPU")} for n in nodes if n.get("Alive")]
            raise ValueError(f"model {m['label']!r}: its extraction tasks ask for {need['CPU']:g} CPU(s) (threads) "
                             f"and {need['GPU']:g} GPU(s) (gpus), but no node of the Ray cluster has that many "
                             f"(nodes: {alive}); lower gpus/threads in the spec or add such a node")


def run_ray(spec: Dict[str, Any], units: List[Dict[str, Any]], todo: List[Dict[str, Any]],
            address: Optional[str]) -> Iterator[Dict[str, Any]]:
    """Run ``todo`` on Ray; yields each cell's result row as it finishes."""
    try:
        import ray
    except ImportError:
        raise ImportError('backend="ray" needs Ray: pip install "iis[ray]"') from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    by_unit: Dict[int, List[Dict[str, Any]]] = {}
    for c in todo:
        by_unit.setdefault(c["unit"], []).append(c)
    _check_feasible(ray.nodes(), spec, [units[ui] for ui in by_unit])
    # extraction jobs: per unit its model's features; CLIP embeddings, which do not depend on
    # the model, once per cache entry for all the units that read them
    jobs: List[Tuple[int, Dict[str, Any]]] = []  # (the unit that owns it, the unit restricted to its keys)
    first_job: Dict[str, int] = {}
    unit_jobs: Dict[int, List[int]] = {}
    for ui in by_unit:
        u = units[ui]
        unit_jobs[ui] = [len(jobs)]
        jobs.append((ui, dict(u, keys={n: k for n, k in u["keys"].items() if not n.startswith("clip-")})))
        for n, k in u["keys"].items():
            if n.startswith("clip-"):
                if k not in first_job:
                    first_job[k] = len(jobs)
                    jobs.append((ui, dict(u, keys={n: k})))
                unit_jobs[ui].append(first_job[k])
    extract = ray.remote(_extract_task)
    probe = ray.remote(_probe_task)
    score = ray.remote(_score_task)
    pending: Dict[Any, Any] = {}
    for j, (ui, job) in enumerate(jobs):
        opts = {"num_cpus": spec["threads"], "num_gpus": units[ui]["model"]["gpus"]}
        pending[extract.options(**opts).remote(spec, job)] = ("x", j)
    done: Dict[int, Dict[str, Any]] = {}
    # the dense probe: one task per probe (train and eval features, solver options) for all
    # the libraries' cells of the units that share it, once the first such unit is extracted
    probe_of = {ui: _probe_path(spec, units[ui]) for ui in by_unit}
    probes: Dict[str, Optional[Dict[str, Any]]] = {}  # path: its task's result (None while it runs)
    waiting = set(by_unit)  # units whose scoring tasks are not submitted yet
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            what, item = pending.pop(ref)
            if what == "cell":
                yield ray.get(ref)
                continue
            if what == "probe":
                probes[item] = ray.get(ref)
            else:
                done[item] = ray.get(ref)
            for ui in [ui for ui in waiting if all(j in done for j in unit_jobs[ui])]:
                ext, opts = _unit_request(spec, ray.nodes(), ui, [(jobs[j][0], done[j]) for j in unit_jobs[ui]])
                path = probe_of[ui]
                if "error" not in ext:
                    if path not in probes:
                        probes[path] = None
                        pending[probe.options(**opts).remote(spec, units[ui])] = ("probe", path)
                    if probes[path] is None:
                        continue  # its probe is running
                    if probes[path].get("error"):
                        ext, opts = dict(ext, error=probes[path]["error"]), {"num_cpus": 1}
                waiting.discard(ui)
                for i, c in enumerate(by_unit[ui]):
                    # the extraction's time is counted once, in the unit's first cell
                    e = ext if i == 0 else dict(ext, seconds=0.0)
                    pending[score.options(**opts).remote(spec, c, units[ui], e)] = ("cell", c)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


def _probe_task(spec: Dict[str, Any], unit: Dict[str, Any]) -> Dict[str, Any]:
    """Fit a unit's dense probe into the cache (its cells read it from there)."""
    try:
        _shared_probe(spec, unit)
    except Exception as exc:  # reported by every cell that shares it
        return {"error": f"the dense probe failed: {type(exc).__name__}: {exc}"}
    return {}


def _unit_request(spec: Dict[str, Any], nodes: List[Dict[str, Any]], ui: int,
                  exts: List[Tuple[int, Dict[str, Any]]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(extraction result, task options) of a unit's probe and scoring tasks once its
    extraction jobs (``(owning unit, result)``, its own first) are done; the result holds
    an ``"error"`` when a job failed or no node has the memory the tasks need."""
    errors = [e["error"] for _, e in exts if e.get("error")]
    ext = {"ray_extract": exts[0][1]["ray_extract"], "extracted": [n for _, e in exts for n in e.get("extracted", [])],
           # a job's time is counted in the unit that owns it
           "seconds": sum(e.get("seconds", 0.0) for owner, e in exts if owner == ui),
           "bytes": sum(e.get("bytes", 0) for _, e in exts)}
    opts = {"num_cpus": spec["threads"], "memory": int(2 * ext["bytes"] + _MEMORY_SLACK)}
    if errors:
        ext["error"] = errors[0]
    elif _node_with(nodes, {"CPU": opts["num_cpus"], "memory": opts["memory"]}) is None:
        ext["error"] = (f"scoring needs {opts['memory'] / 2**30:.2f} GiB of memory (twice its features and "
                        "256 MiB) but no node of the Ray cluster has that much")
    if "error" in ext:
        opts = {"num_cpus": 1}  # it only records the error
    return ext, opts
