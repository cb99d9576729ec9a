"""Comparison reports: every pruned run beside its baseline (CSV, Markdown and a plot)."""
from .compare import compare
from .load import load_results
from .write import write_report

__all__ = ["compare", "load_results", "write_report"]
