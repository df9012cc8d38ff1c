"""Concept lists for text libraries: one concept per line.

>>> concepts = iis.load_concepts("cifar10_concepts.txt")
>>> lib = iis.ConceptLibrary.text(concepts, train_x, clip_img, clip_txt)
"""
from __future__ import annotations

import os
from typing import Iterable, List, Union

__all__ = ["load_concepts", "clean_concepts", "save_concepts"]


def clean_concepts(lines: Iterable[str], *, lowercase: bool = False) -> List[str]:
    """Strip each entry, drop blanks and repeated concepts (first occurrence kept, order kept).

    Parameters
    ----------
    lines : iterable of str
    lowercase : bool
        Lower-case every concept first (then ``"Fur"`` and ``"fur"`` are one concept).

    Returns
    -------
    list of str
    """
    if isinstance(lines, (str, bytes)):
        raise TypeError("clean_concepts takes an iterable of strings, not a single string; "
                        "use load_concepts(path) for a file")
    out, seen = [], set()
    for i, line in enumerate(lines):
        if not isinstance(line, str):
            raise TypeError(f"concept list entry {i} is {type(line).__name__}, expected str")
        c = " ".join(line.split())  # trim, and fold inner runs of whitespace to one space
        if lowercase:
            c = c.lower()
        if c and c not in seen:
            seen.add(c)
            out.append(c)
    return out


def load_concepts(path: Union[str, "os.PathLike[str]"], *, lowercase: bool = False,
                  encoding: str = "utf-8") -> List[str]:
    """Read a concept list: one concept per line; blank lines and duplicates removed.

    Whitespace at both ends is stripped and inner runs of whitespace become one
    space, so ``"  striped  fur "`` and ``"striped fur"`` are the same concept.
    Order of first occurrence is kept.

    Parameters
    ----------
    path : str or PathLike
        Text file (UTF-8 by default; a byte-order mark is ignored).
    lowercase : bool
        Lower-case every concept (case-insensitive de-duplication).
    encoding : str
        Text encoding of the file.

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        When the file holds no concept or cannot be decoded.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        with open(path, encoding=enc) as fh:
            concepts = clean_concepts(fh.read().splitlines(), lowercase=lowercase)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{os.fspath(path)}: not a {encoding} text file ({exc})") from None
    if not concepts:
        raise ValueError(f"{os.fspath(path)}: no concept in the file (only blank lines)")
    return concepts


def save_concepts(concepts: Iterable[str], path: Union[str, "os.PathLike[str]"]) -> None:
    """Write concepts one per line (UTF-8), cleaned as :func:`load_concepts` reads them."""
    items = clean_concepts(concepts)
    for c in items:
        if "\n" in c or "\r" in c:  # pragma: no cover - clean_concepts folds whitespace already
            raise ValueError(f"concept {c!r} spans lines")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("".join(c + "\n" for c in items))
