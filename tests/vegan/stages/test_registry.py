"""The stage registry: order, plans, keys and the checks on the declarations."""

from __future__ import annotations

import dataclasses

import pytest

import vegan
from vegan.config import load_config
from vegan.manifest import Manifest
from vegan.stages.base import Stage
from vegan.stages.registry import DECLARED, STAGE_NAMES, STAGES, RegistryError, _topological, plan, stage_keys
from vegan.storage import Storage


def test_order_is_topological_and_plans_follow_upstream():
    assert STAGE_NAMES == ("ae", "latents", "ot", "generate", "gan", "eval")
    for i, name in enumerate(STAGE_NAMES):
        assert all(STAGE_NAMES.index(up) < i for up in STAGES[name].upstream), name
    assert STAGES["gan"].upstream == ("ae", "latents", "generate")
    assert plan("latents") == ["ae", "latents"]
    assert plan("gan") == ["ae", "latents", "ot", "generate", "gan"]
    with pytest.raises(ValueError, match="unknown stage 'nope'; stages are ae, latents"):
        plan("nope")


def test_declaration_order_does_not_decide_execution_order():
    shuffled = tuple(reversed(DECLARED))
    assert tuple(_topological(shuffled)) == STAGE_NAMES


def _noop(ctx):
    return {}


@pytest.mark.parametrize(
    "extra, message",
    [
        (Stage("ae", _noop, "x/{key}", "again"), "declared twice"),
        (Stage("data", _noop, "x/{key}", "t", upstream=("nope",)), r"unknown upstream stage\(s\) \['nope'\]"),
        (Stage("name", _noop, "x/{key}", "t"), r"PipelineConfig has no section\(s\) \['name'\]"),
        (Stage("data", _noop, "x/{key}", "t", reads=("extra",)), r"PipelineConfig has no section\(s\) \['extra'\]"),
    ],
)
def test_bad_declarations_are_refused(extra, message):
    with pytest.raises(RegistryError, match=message):
        _topological((*DECLARED, extra))


def test_a_config_section_without_a_stage_is_refused():
    without_eval = tuple(s for s in DECLARED if s.name != "eval")
    with pytest.raises(RegistryError, match=r"section\(s\) \['eval'\] belong to no stage"):
        _topological(without_eval)


def test_a_cycle_is_refused():
    looped = dataclasses.replace(STAGES["ae"], upstream=("eval",))
    with pytest.raises(RegistryError, match="form a cycle"):
        _topological((looped, *DECLARED[1:]))


def test_keys_carry_the_code_version(monkeypatch):
    cfg = load_config("tiny")
    before = stage_keys(cfg)
    monkeypatch.setattr(vegan, "__version__", "99.0.0")
    assert all(a != b for a, b in zip(before.values(), stage_keys(cfg).values()))
    monkeypatch.undo()
    # a stage's own version bump rekeys it and what depends on it, nothing upstream
    monkeypatch.setitem(
        STAGES, "generate", dataclasses.replace(STAGES["generate"], version=STAGES["generate"].version + 1)
    )
    after = stage_keys(cfg)
    assert [s for s in STAGE_NAMES if after[s] == before[s]] == ["ae", "latents", "ot"]


def test_keys_hash_the_real_upstream():
    """gan reads ae, latents and generate: a generate change rekeys gan and eval, not ot."""
    base = stage_keys(load_config("tiny"))
    changed = stage_keys(load_config("tiny", overrides=["generate.k=3"]))
    assert [s for s in STAGE_NAMES if base[s] != changed[s]] == ["generate", "gan", "eval"]


def test_manifest_outputs_come_from_the_declarations(tmp_path):
    m = Manifest(Storage(str(tmp_path)), load_config("tiny"))
    assert m.output("latents") == f"latents/{m.keys['latents']}.zarr"
    assert m.output("generate") == f"samples/{m.keys['generate']}.zarr"
    assert {s: m.output(s) for s in STAGES} == {s: st.output.format(key=m.keys[s]) for s, st in STAGES.items()}
