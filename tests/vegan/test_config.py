import pytest
from pydantic import ValidationError

from vegan.config import PipelineConfig, load_config, parse_overrides, recorded_config
from vegan.stages.registry import stage_keys


def test_changing_a_stage_rekeys_only_it_and_downstream():
    base = stage_keys(load_config("tiny"))
    changed = stage_keys(load_config("tiny", overrides=["ot.tol=0.45"]))
    assert [s for s in base if base[s] == changed[s]] == ["ae", "latents"]
    assert all(changed[s] != base[s] for s in ("ot", "generate", "gan", "eval"))


def test_execution_only_fields_do_not_change_keys():
    a = stage_keys(load_config("tiny"))
    sets = ["cluster.address=local", "cluster.n_workers=4", "ot.device=cpu", "ae.device=cpu", "ae.checkpoint_every=7"]
    assert stage_keys(load_config("tiny", overrides=sets)) == a


def test_retired_ot_cluster_settings_name_their_replacement(tmp_path):
    with pytest.raises(ValidationError, match=r"ot\.dask is retired: set cluster\.address instead"):
        load_config("tiny", overrides=["ot.dask=local"])
    (tmp_path / "old.yaml").write_text("ot:\n  n_workers: 4\n")
    with pytest.raises(ValidationError, match=r"ot\.n_workers is retired: set cluster\.n_workers instead"):
        load_config("tiny", path=tmp_path / "old.yaml")
    # A manifest from before the retirement records both at their values: read back, they are dropped.
    old = load_config("tiny").model_dump(mode="json")
    old["ot"] |= {"dask": "none", "n_workers": 2}
    assert recorded_config(old) == load_config("tiny")


def test_data_change_rekeys_everything():
    a = stage_keys(load_config("tiny"))
    b = stage_keys(load_config("tiny", overrides=["data.limit=300"]))
    assert all(a[s] != b[s] for s in a)


def test_overrides_are_typed_and_checked(tmp_path):
    assert parse_overrides(["ot.tol=0.5", "data.name=mnist", "gan.enabled=false"]) == {
        "ot": {"tol": 0.5},
        "data": {"name": "mnist"},
        "gan": {"enabled": False},
    }
    with pytest.raises(ValidationError, match="tol"):
        load_config("tiny", overrides=["ot.tol=fast"])
    with pytest.raises(ValidationError, match="Extra inputs"):
        load_config("tiny", overrides=["ot.learning_rate=0.1"])
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["ot.tol"])
    with pytest.raises(ValueError, match="unknown preset"):
        load_config("nope")
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(path=tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("ae:\n  steps: [1\n")
    with pytest.raises(ValueError, match=r"broken.yaml is not valid YAML: .*line 3"):
        load_config(path=broken)


def test_yaml_file_over_preset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("ae:\n  steps: 7\nname: mine\n")
    cfg = load_config("tiny", path=f)
    assert cfg.ae.steps == 7 and cfg.name == "mine" and cfg.data.name == "digits"
    assert isinstance(PipelineConfig.model_json_schema(), dict)  # renders as a Prefect UI form
