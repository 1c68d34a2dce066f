"""Export stage: the adapter as it is, and the adapter merged into its base.

The names below are imported on first use, so `tunesmith.export.hub` (push) does not load torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_adapter", "export_merged", "run_export"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tunesmith.export import merged

        return getattr(merged, name)
    raise AttributeError(f"module 'tunesmith.export' has no attribute {name!r}")
