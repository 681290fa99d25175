"""Thin Prefect tasks around the stages of :mod:`vegan.stages` (no maths here)."""

from tasks.stages import STAGE_TASKS

__all__ = ["STAGE_TASKS"]
