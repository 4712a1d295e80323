"""mmopt: prompt optimization for generative vision models.

``import mmopt`` is light: it imports no torch, diffusers, open_clip or
transformers. Heavy pieces load on first use through the registry.
"""
from mmopt.types import (
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
from mmopt.errors import LLMError, MissingExtraError, MmoptError, ModelLoadError
from mmopt.registry import create, register

__version__ = "0.1.0"

__all__ = [
    "DSGQuestion", "Generation", "Generator", "LLM", "Proposer", "Score", "Scorer",
    "SearchState", "Trial", "VQAAnswer", "VQAModel", "LLMError", "MissingExtraError",
    "MmoptError", "ModelLoadError", "create", "register", "__version__",
]
