"""Experiments: the paper's studies as plans (YAML), a resumable shardable runner, tidy results,
paper-style tables and plots (``cardiossp experiment / table / plot``)."""

from .plan import Plan, RunSpec, expand, load_plan
from .report import write_report
from .runner import load_campaign, run_campaign

__all__ = ["Plan", "RunSpec", "expand", "load_plan", "load_campaign", "run_campaign", "write_report"]
