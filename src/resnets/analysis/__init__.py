"""Counting and designing: parameter/MAC counts, per-layer summaries, ResNeXt complexity templates."""
from .design import design_widths
from .flops import count_macs, count_params, model_stats
from .summary import summarize

__all__ = ["count_macs", "count_params", "design_widths", "model_stats", "summarize"]
