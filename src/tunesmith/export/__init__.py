"""Export stage: the adapter as it is, and the adapter merged into its base."""

from tunesmith.export.merged import export_adapter, export_merged, run_export

__all__ = ["export_adapter", "export_merged", "run_export"]
