"""The list of stages, written once, and what derives from it: order, keys, plans.

``STAGES`` maps each name to its :class:`~vegan.stages.base.Stage`, in a
topological order of ``upstream`` (ties keep the order of ``DECLARED``). The
declarations are checked on import: unique names, known upstreams, no cycle, a
``PipelineConfig`` section per stage and no section that no stage uses.
"""

from __future__ import annotations

from pydantic import BaseModel

import vegan
from vegan.config import EXECUTION_FIELDS, EXECUTION_SECTIONS, PipelineConfig, config_hash
from vegan.stages import ae, evaluate, gan, generate, latents, ot
from vegan.stages.base import Stage

DECLARED: tuple[Stage, ...] = (
    ae.STAGE,
    latents.STAGE,
    ot.STAGE,
    generate.STAGE,
    gan.STAGE,
    evaluate.STAGE,
)


class RegistryError(RuntimeError):
    """The stage declarations contradict each other or the config."""


def _topological(declared: tuple[Stage, ...]) -> dict[str, Stage]:
    by_name: dict[str, Stage] = {}
    for stage in declared:
        if stage.name in by_name:
            raise RegistryError(f"stage {stage.name!r} is declared twice")
        by_name[stage.name] = stage
    sections = {
        name
        for name, field in PipelineConfig.model_fields.items()
        if isinstance(field.annotation, type)
        and issubclass(field.annotation, BaseModel)
        and name not in EXECUTION_SECTIONS
    }
    for stage in declared:
        unknown = [u for u in stage.upstream if u not in by_name]
        if unknown:
            raise RegistryError(f"stage {stage.name!r}: unknown upstream stage(s) {unknown}")
        missing = [s for s in (stage.name, *stage.reads) if s not in sections]
        if missing:
            raise RegistryError(f"stage {stage.name!r}: PipelineConfig has no section(s) {missing}")
    unused = sections - {s.name for s in declared} - {r for s in declared for r in s.reads}
    if unused:
        raise RegistryError(f"PipelineConfig section(s) {sorted(unused)} belong to no stage")
    ordered: dict[str, Stage] = {}
    while len(ordered) < len(declared):
        ready = [s for s in declared if s.name not in ordered and all(u in ordered for u in s.upstream)]
        if not ready:
            left = sorted(set(by_name) - set(ordered))
            raise RegistryError(f"the upstream declarations of {left} form a cycle")
        ordered[ready[0].name] = ready[0]
    return ordered


STAGES: dict[str, Stage] = _topological(DECLARED)
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)
"""Stage names in execution order."""


def get(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}") from None


def plan(until: str) -> list[str]:
    """The stages to run for ``until``: it and everything upstream of it, in execution order."""
    needed = {get(until).name}
    for name in reversed(STAGE_NAMES):  # reverse topological order: a stage's dependants come first
        if name in needed:
            needed.update(STAGES[name].upstream)
    return [name for name in STAGE_NAMES if name in needed]


def stage_key(cfg: PipelineConfig, name: str, _memo: dict[str, str] | None = None) -> str:
    """Key of a stage: hash of its config section (execution-only fields left out), the sections it
    ``reads``, the code version (package + stage) and the keys of its upstream stages."""
    memo = {} if _memo is None else _memo
    if name in memo:
        return memo[name]
    stage = get(name)
    section = getattr(cfg, name)
    payload = {
        "stage": name,
        "code": f"{vegan.__version__}/{stage.version}",
        "config": section.model_dump(mode="json", exclude=EXECUTION_FIELDS & set(type(section).model_fields)),
        "reads": {s: getattr(cfg, s).model_dump(mode="json") for s in stage.reads},
        "upstream": {up: stage_key(cfg, up, memo) for up in stage.upstream},
    }
    memo[name] = f"{name}-{config_hash(payload)}"
    return memo[name]


def stage_keys(cfg: PipelineConfig) -> dict[str, str]:
    memo: dict[str, str] = {}
    return {name: stage_key(cfg, name, memo) for name in STAGE_NAMES}
