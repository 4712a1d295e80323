"""mmopt: prompt optimization for generative vision models.

``import mmopt`` is light: it imports no torch, diffusers, open_clip or
transformers. Heavy pieces load on first use through the registry.
"""
import os as _os

# OpenMP threads that spin while they wait starve each other when the CPU is shared (other
# processes, or several mmopt processes): on the project's 2-core machine under load, one 64 px
# ShapesWorld image took 27 s with torch's 2 spinning threads and 0.4 s with passive ones. It only
# takes effect when mmopt is imported before torch; a value already set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from mmopt.types import (  # noqa: E402
    DSGQuestion,
    Generation,
    Generator,
    LLM,
    Proposer,
    Score,
    Scorer,
    SearchState,
    Trial,
    VQAAnswer,
    VQAModel,
)
from mmopt.errors import LLMError, MissingExtraError, MmoptError, ModelLoadError  # noqa: E402
from mmopt.registry import create, register  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "DSGQuestion", "Generation", "Generator", "LLM", "Proposer", "Score", "Scorer",
    "SearchState", "Trial", "VQAAnswer", "VQAModel", "LLMError", "MissingExtraError",
    "MmoptError", "ModelLoadError", "create", "register", "__version__",
]
