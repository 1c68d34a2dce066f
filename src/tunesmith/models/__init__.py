"""Model sources: embedded aliases, local folders, GGUF files and Hub ids."""

from tunesmith.models.loading import load_model, load_tokenizer, pick_device, pick_dtype
from tunesmith.models.registry import DEFAULT_MODEL, EMBEDDED, list_models, pull_model
from tunesmith.models.source import resolve_model_source

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "list_models",
    "load_model",
    "load_tokenizer",
    "pick_device",
    "pick_dtype",
    "pull_model",
    "resolve_model_source",
]
