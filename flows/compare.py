"""The compare flow: several cookbook models, one dataset, one budget, one table."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from vegan.compare import compare_models
from vegan.config import AEConfig, DataConfig, EvalConfig
from vegan.evaluation import make_evaluate_fn
from vegan.storage import Storage


@flow(name="compare-models", log_prints=True)
def compare_models_flow(
    models: list[str] = ["ae", "vae", "wae-mmd", "wae-gan", "aae", "wgan-gp"],  # noqa: B006 - a UI default
    data: DataConfig = DataConfig(name="digits"),
    budget: AEConfig = AEConfig(steps=500, latent_dim=8, width=32),
    eval: EvalConfig = EvalConfig(n_samples=500),  # noqa: A002 - the field name users know
    storage: str = "./runs/compare",
    n_samples: int = 500,
) -> dict[str, Any]:
    """Train every model in ``models`` with the same nets and budget, evaluate them
    with the same metrics, and write ``compare/table.md``, ``table.json`` and ``samples.png``.

    Models train one after the other: on CPU workers torch already uses every
    core, so concurrent trainings would only contend; finished trainings are
    reused on rerun.
    """
    store = Storage(storage)
    store.check_writable()
    result = compare_models(
        data, models, budget, store, make_evaluate_fn(data, eval, cache=store.sub("cache")), n_samples=n_samples
    )
    table = store.sub("compare").read_text("table.md")
    create_markdown_artifact(
        key="vegan-compare", markdown=f"# Model comparison\n\n{table}", description=f"cookbook models on {data.name}"
    )
    get_run_logger().info("comparison table: %s", result["files"]["table.md"])
    return result
