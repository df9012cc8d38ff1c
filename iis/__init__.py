"""iis: the Inherent Interpretability Score (Shen et al., ICLR 2025) with a C core.

>>> import iis
>>> lib = iis.ConceptLibrary.prototype(elements, element_labels, n_concepts=200)
>>> res = iis.score(train_x, train_y, eval_x, eval_y, lib)
>>> res.iis, res.arr
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import _blas

_blas.install()

from ._api import (DEFAULT_GRID, STOP_REASONS, ConvergenceWarning, IISResult, ProbeResult,  # noqa: E402
                   ProgressEvent, activation_stats, probe, project, score)
from ._config import show_config  # noqa: E402
from ._library import ConceptLibrary  # noqa: E402
from ._infodisent import InfoDisent, InfoDisentExplanation  # noqa: E402
from ._predictor import Explanation, InterpretablePredictor  # noqa: E402
from ._sparse import SparsePath, sparse_path  # noqa: E402
from .concepts import load_concepts  # noqa: E402
from ._sweep import sweep  # noqa: E402
from . import demo  # noqa: E402,F401

__all__ = [
    "DEFAULT_GRID",
    "ConceptLibrary",
    "ConvergenceWarning",
    "Explanation",
    "IISResult",
    "InfoDisent",
    "InfoDisentExplanation",
    "InterpretablePredictor",
    "ProbeResult",
    "ProgressEvent",
    "activation_stats",
    "load_concepts",
    "probe",
    "project",
    "score",
    "show_config",
    "sweep",
    "STOP_REASONS",
    "SparsePath",
    "sparse_path",
    "__version__",
]
