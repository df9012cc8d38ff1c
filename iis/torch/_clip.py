"""CLIP embeddings for text concept libraries: :func:`clip_embeddings`.

The Text library (Label-free CBM recipe, docs/method.md section 6) needs CLIP image
embeddings of the train images and CLIP text embeddings of the concepts, both
from one CLIP model of the user's choice. This helper computes them with an
open_clip model (``pip install open_clip_torch``) or any object with
``encode_image`` / ``encode_text``; :meth:`iis.ConceptLibrary.text` takes the
arrays.

>>> import open_clip
>>> model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained="openai")
>>> tokenizer = open_clip.get_tokenizer("ViT-B-32")
>>> img, txt = iis.torch.clip_embeddings(model, images, concepts,
...                                      preprocess=preprocess, tokenizer=tokenizer)
>>> lib = iis.ConceptLibrary.text(concepts, train_features, img, txt)
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..concepts import clean_concepts
from ._features import _batches, _check_positive_int, _model_device

__all__ = ["clip_embeddings"]


class _PreprocessedImages(torch.utils.data.Dataset):
    """A list of PIL images or image file paths, each passed through ``preprocess``."""

    def __init__(self, items: Sequence[Any], preprocess: Callable[[Any], torch.Tensor]) -> None:
        self.items = items
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self.items[i]
        if isinstance(item, (str, os.PathLike)):
            from PIL import Image

            with Image.open(item) as im:
                item = im.convert("RGB")
        out = self.preprocess(item)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"preprocess returned {type(out).__name__}, expected a tensor")
        return out


def _default_tokenizer() -> Callable[[list], torch.Tensor]:
    try:
        import open_clip
    except ImportError:
        raise ImportError("tokenizer=None uses open_clip's CLIP tokenizer: pip install open_clip_torch, "
                          "or pass the tokenizer of your CLIP model") from None
    return open_clip.tokenize


def _encode(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, what: str) -> np.ndarray:
    out = fn(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{what} returned {shape} for a batch of {x.shape[0]}; expected (batch, dim)")
    return out.detach().float().cpu().numpy()


def clip_embeddings(model: Any, images: Any, concepts: Sequence[str], *,
                    tokenizer: Callable[[list], torch.Tensor] | None = None,
                    preprocess: Callable[[Any], torch.Tensor] | None = None,
                    template: str = "{}", batch_size: int = 64, device: Any = None,
                    num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CLIP image embeddings of ``images`` and text embeddings of ``concepts``.

    Parameters
    ----------
    model : open_clip CLIP model (or any object with ``encode_image`` and ``encode_text``)
        Put on the device of its parameters (or ``device``); run in eval mode and
        without gradients; its training flag is restored afterwards.
    images : tensor, float array, Dataset, DataLoader, or list of PIL images / paths
        Tensors, arrays, datasets and loaders must already be preprocessed for the
        model (``(N, 3, H, W)``; datasets may yield ``(image, label)``); a list of
        PIL images or file paths is passed through ``preprocess`` one by one.
        The order is kept: row i of the image embeddings is image i.
    concepts : sequence of str
        Concept strings, e.g. from :func:`iis.load_concepts`; blanks and
        duplicates are rejected so rows match the concepts one to one.
    tokenizer : callable, optional
        ``tokenizer(list_of_str) -> LongTensor`` (``open_clip.get_tokenizer(name)``);
        default ``open_clip.tokenize`` (the OpenAI CLIP BPE tokenizer).
    preprocess : callable, optional
        Image transform (the third output of ``open_clip.create_model_and_transforms``);
        needed for PIL images / paths.
    template : str
        Prompt with one ``{}`` for the concept (LF-CBM encodes the bare concept: ``"{}"``).
    batch_size, num_workers : int
        Batching of images and concepts; workers for a Dataset.
    device : torch.device or str, optional
        Where to run (default: the model's device).

    Returns
    -------
    (image_features, text_features) : tuple of float32 ndarrays
        ``(N, e)`` and ``(len(concepts), e)``, not normalised
        (:meth:`iis.ConceptLibrary.text` normalises them).
    """
    for attr in ("encode_image", "encode_text"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(f"model must have an {attr} method (an open_clip CLIP model), "
                            f"got {type(model).__name__}")
    if isinstance(concepts, (str, bytes)):
        raise TypeError("concepts must be a sequence of strings, not one string")
    concepts = list(concepts)
    cleaned = clean_concepts(concepts)
    if len(cleaned) != len(concepts) or any(c != d for c, d in zip(cleaned, concepts)):
        raise ValueError("concepts must be distinct, non-blank and trimmed (one embedding per concept); "
                         "clean them with iis.concepts.clean_concepts or iis.load_concepts")
    if not concepts:
        raise ValueError("concepts is empty")
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"template must contain '{{}}' exactly once, got {template!r}")
    batch_size = _check_positive_int(batch_size, "batch_size")
    if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images is empty")
        if not isinstance(images[0], torch.Tensor):
            if preprocess is None:
                raise ValueError("a list of PIL images or paths needs preprocess= (the model's transform)")
            images = _PreprocessedImages(images, preprocess)
        else:
            images = torch.stack(list(images))
    if tokenizer is None:
        tokenizer = _default_tokenizer()
    dev = torch.device(device) if device is not None else (
        _model_device(model) if isinstance(model, torch.nn.Module) else torch.device("cpu"))

    was_training = bool(getattr(model, "training", False))
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        with torch.inference_mode():
            it, _, _ = _batches(images, batch_size, int(num_workers))
            img_parts = []
            for x, _ in it:
                if not isinstance(x, torch.Tensor):
                    raise TypeError(f"image batches must be tensors, got {type(x).__name__}")
                img_parts.append(_encode(model.encode_image, x.to(dev).float(), "encode_image"))
            if not img_parts:
                raise ValueError("images yielded no batch")
            prompts = [template.format(c) for c in concepts]
            txt_parts = []
            for s in range(0, len(prompts), batch_size):
                tok = tokenizer(prompts[s:s + batch_size])
                if not isinstance(tok, torch.Tensor):
                    tok = torch.as_tensor(tok)
                txt_parts.append(_encode(model.encode_text, tok.to(dev), "encode_text"))
    finally:
        if isinstance(model, torch.nn.Module) and was_training:
            model.train()
    img = np.concatenate(img_parts, axis=0)
    txt = np.concatenate(txt_parts, axis=0)
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"image embeddings have dimension {img.shape[1]} but text embeddings "
                         f"{txt.shape[1]}: encode_image and encode_text disagree")
    return np.ascontiguousarray(img, dtype=np.float32), np.ascontiguousarray(txt, dtype=np.float32)
