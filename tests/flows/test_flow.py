"""The tiny preset through the real Prefect flow (test harness: a real, local API).

One module-scoped run of the whole pipeline is shared by the tests below; the
resume test changes only the OT config, so the autoencoder and latents of that
run must be reused (Prefect state Reused, files untouched) while OT reruns.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from flows.pipeline import aeot_pipeline
from vegan.config import load_config
from vegan.manifest import Manifest
from vegan.stages.registry import STAGES
from vegan.storage import Storage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def tiny_run(harness, tmp_path_factory):
    storage = str(tmp_path_factory.mktemp("runs") / "tiny")
    cfg = load_config("tiny")
    state = aeot_pipeline(config=cfg, storage=storage, progress=False, return_state=True)
    return cfg, storage, state


def task_runs(flow_state) -> dict:
    """Stage -> its task run in one flow run, read back from the Prefect API."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
        )
    return {r.name.split(":")[0]: r for r in runs}  # run names are "ae: train ..."


def stage_states(flow_state) -> dict[str, str]:
    return {stage: r.state.name for stage, r in task_runs(flow_state).items() if r.state}


def test_tiny_pipeline_completes_and_writes_report(tiny_run):
    cfg, storage, state = tiny_run
    assert state.is_completed(), state.message
    st = Storage(storage)
    status = Manifest(st, cfg).status()
    assert {s: e["status"] for s, e in status.items()} == {s: "done" for s in status}
    eval_dir = st.sub(Manifest(st, cfg).output("eval"))
    metrics = eval_dir.read_json("metrics.json")["sets"]
    assert {"reconstructions", "ae-ot", "ae-ot-gan", "gaussian-noise"} <= set(metrics)
    for name, m in metrics.items():
        assert m["fid"] == m["fid"] and m["fid"] >= 0, name  # finite, non-negative
    # reconstructions are the ceiling: closer to the data than decoded noise
    assert metrics["reconstructions"]["fid"] < metrics["gaussian-noise"]["fid"]
    assert eval_dir.read_bytes("samples-ae-ot.png").startswith(b"\x89PNG")
    assert "ae-ot" in eval_dir.read_text("report.md")
    manifest = json.loads(st.read_bytes("manifest.json"))
    assert manifest["config"]["name"] == "tiny" and "torch" in manifest["versions"]


def test_the_flow_graph_is_the_stage_dag(tiny_run):
    """Each task run waits for the task runs of exactly its declared upstream stages."""
    runs = task_runs(tiny_run[2])
    assert set(runs) == set(STAGES)
    ids = {stage: run.id for stage, run in runs.items()}
    for stage, run in runs.items():
        waited = {i.id for i in run.task_inputs.get("wait_for", [])}
        assert waited == {ids[up] for up in STAGES[stage].upstream}, stage


def test_each_stage_shows_its_progress_as_progress_artifacts(tiny_run):
    """The library's loops (vegan.progress) reach the Prefect UI as progress artifacts of their task
    runs, finished at 100 %, even with the console bars off (progress=False)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    runs = task_runs(tiny_run[2])
    with get_client(sync_client=True) as client:
        flow_run = tiny_run[2].state_details.flow_run_id
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run]))
        )
    progress = {}
    for a in artifacts:
        if a.type == "progress":
            progress.setdefault(a.task_run_id, []).append(a)
    loops = {
        "ae": ["train ae"],
        "latents": ["latents"],
        "ot": ["OT solve"],
        "generate": ["centroids", "generate"],
        "gan": ["AE-OT-GAN"],
    }
    for stage, descs in loops.items():
        mine = progress.get(runs[stage].id, [])
        assert sorted(a.description.split(": ")[1] for a in mine) == sorted(descs), stage
        assert all(a.data == 100 and a.description.startswith(f"{stage}: ") and "done, " in a.description for a in mine)


def test_rerun_is_reused_and_changes_nothing(tiny_run):
    cfg, storage, _ = tiny_run
    st = Storage(storage)
    before = {p: st.fs.info(p)["mtime"] for p in st.fs.find(st.root) if "/done/" in p or p.endswith(".pt")}
    state = aeot_pipeline(config=cfg, storage=storage, progress=False, return_state=True)
    assert state.is_completed()
    runs = task_runs(state)
    assert {r.state.name for r in runs.values()} == {"Reused"}
    assert all(r.state.type.value == "COMPLETED" and "done marker" in r.state.message for r in runs.values())
    after = {p: st.fs.info(p)["mtime"] for p in before}
    assert before == after


def test_failed_ot_then_resume_reuses_finished_stages(tiny_run, monkeypatch):
    cfg, storage, _ = tiny_run
    cfg2 = load_config("tiny", overrides=["ot.tol=0.45"])  # new OT key; AE and latents keys unchanged
    st = Storage(storage)
    m = Manifest(st, cfg2)
    ae_model = st.path(m.output("ae"), "model.pt")
    latent_files = [p for p in st.fs.find(st.path(m.output("latents")))]
    stamps = {p: st.fs.info(p)["mtime"] for p in [ae_model, *latent_files]}

    def broken_ot(run):
        raise RuntimeError("simulated worker failure in OT")

    monkeypatch.setitem(STAGES, "ot", dataclasses.replace(STAGES["ot"], run=broken_ot))
    failed = aeot_pipeline(config=cfg2, storage=storage, progress=False, return_state=True)
    assert failed.is_failed()
    states = stage_states(failed)
    assert states["ae"] == "Reused" and states["latents"] == "Reused"
    assert states["ot"] == "Failed" and "generate" not in states  # retried once, then nothing downstream
    assert Manifest(st, cfg2).status()["ot"]["status"] == "failed"
    assert "simulated worker failure" in Manifest(st, cfg2).status()["ot"]["error"]

    monkeypatch.undo()
    resumed = aeot_pipeline(config=cfg2, storage=storage, progress=False, return_state=True)
    assert resumed.is_completed(), resumed.message
    states = stage_states(resumed)
    assert states["ae"] == "Reused" and states["latents"] == "Reused"
    assert states["ot"] == "Completed" and states["eval"] == "Completed"
    assert {p: st.fs.info(p)["mtime"] for p in stamps} == stamps  # finished work untouched
    assert all(e["status"] == "done" for e in Manifest(st, cfg2).status().values())


def test_the_flow_opens_one_cluster_that_every_task_uses(harness, tmp_path):
    cfg = load_config("tiny", overrides=["cluster.address=local", "cluster.n_workers=1", "ae.steps=20"])
    state = aeot_pipeline(config=cfg, storage=str(tmp_path), until="latents", progress=False, return_state=True)
    assert state.is_completed(), state.message
    m = Manifest(Storage(str(tmp_path)), cfg)
    where = {stage: m.done_info(stage)["cluster"] for stage in ("ae", "latents")}
    assert where["ae"].startswith("tcp://127.0.0.1:") and where["latents"] == where["ae"]  # one client per run


def test_compare_flow_writes_one_table_for_all_models(harness, tmp_path):
    from flows.compare import compare_models_flow
    from vegan.config import AEConfig, DataConfig, EvalConfig

    state = compare_models_flow(
        models=["ae", "wae-mmd", "wgan-gp"],
        data=DataConfig(name="digits", limit=256),
        budget=AEConfig(steps=30, latent_dim=4, width=16, batch_size=32),
        eval=EvalConfig(n_samples=128),
        storage=str(tmp_path),
        n_samples=128,
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert set(result["metrics"]) == {"ae", "wae-mmd", "wgan-gp"}
    table = (tmp_path / "compare" / "table.md").read_text()
    assert all(f"| {m} |" in table for m in ("ae", "wae-mmd", "wgan-gp"))
    assert (tmp_path / "compare" / "samples.png").read_bytes().startswith(b"\x89PNG")
