"""Stage ``ae``: train the autoencoder (or cookbook model) on the dataset."""

from __future__ import annotations

from typing import Any

from vegan.stages.base import Stage, StageContext


def train_ae(run: StageContext) -> dict[str, Any]:
    from vegan.checkpoint import CheckpointDir
    from vegan.models import build_model
    from vegan.training import train_model

    ds = run.dataset
    model = build_model(run.cfg.ae, ds.shape)
    out = run.dir("ae")
    res = train_model(model, ds, run.cfg.ae, CheckpointDir(out, run.cfg.ae.keep_checkpoints), progress=run.progress)
    out.save_torch(
        "model.pt", {"state_dict": res.model.state_dict(), "shape": ds.shape, "config": run.cfg.ae.model_dump()}
    )
    out.write_json("history.json", res.history)
    last = res.history[-1] if res.history else {}
    return {"steps": res.step, "resumed_from": res.resumed_from, "last": last, "n_train": len(ds)}


# version 2: batches stream from dataset chunks (vegan.data.stream), a different order than version 1's.
STAGE = Stage(
    name="ae", run=train_ae, output="ae/{key}", title="train autoencoder", gpu=True, reads=("data",), version=2
)
