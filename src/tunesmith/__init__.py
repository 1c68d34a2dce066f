"""tunesmith: from a pile of examples to a fine-tuned model you can run locally."""

import os

# Offline first: nothing phones home. Set before transformers/huggingface_hub are imported.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
