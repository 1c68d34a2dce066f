"""tunesmith: from a pile of examples to a fine-tuned model you can run locally."""

__version__ = "0.1.0"
