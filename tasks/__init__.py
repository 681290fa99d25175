"""Thin Prefect tasks around the stages of :mod:`vegan.pipeline` (no maths here)."""

from tasks.stages import STAGE_TASKS, stage_cache_key

__all__ = ["STAGE_TASKS", "stage_cache_key"]
