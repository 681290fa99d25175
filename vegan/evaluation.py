"""The evaluation stage: compare AE-OT samples with the baselines a reader expects.

Sets compared against held-out real data:

- ``reconstructions``: decode(encode(x)), the ceiling any latent sampler can reach;
- ``ae-ot``: decoded codes from the OT generation stage;
- ``ae-ot-gan``: the same codes through the fine-tuned generator (when it ran);
- ``gaussian-fit``: decoded samples of a Gaussian fitted to the training codes;
- ``gaussian-noise``: decoded N(0, I) noise;
- ``model-sampler``: the cookbook model's own sampler (VAE/WAE/AAE prior, WGAN-GP).

Writes ``metrics.json``, sample grids, plots and ``report.md`` under ``eval/{key}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from vegan.stages.base import StageContext as Run


@torch.no_grad()
def _decode(decoder: torch.nn.Module, codes: np.ndarray | torch.Tensor, batch: int = 512) -> torch.Tensor:
    z = torch.as_tensor(codes, dtype=torch.float32)
    return torch.cat([decoder(z[i : i + batch]) for i in range(0, len(z), batch)]) if len(z) else z


def _gaussian_fit(codes: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(codes.mean(0), np.cov(codes, rowvar=False), size=n).astype(np.float32)


def sample_sets(run: "Run", held_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every set of generated data this run can produce, as many examples as ``held_out``."""
    cfg, model = run.cfg, run.model
    n, seed = len(held_out), cfg.eval.seed
    sets: dict[str, torch.Tensor] = {}
    if run.has_encoder():
        with torch.no_grad():
            sets["reconstructions"] = torch.cat(
                [model.decode(model.encode(held_out[i : i + 512])) for i in range(0, n, 512)]
            )
        gen = run.generated_codes[:n]
        sets["ae-ot"] = _decode(model.decoder, gen)
        if cfg.gan.enabled and cfg.gan.steps > 0:
            sets["ae-ot-gan"] = _decode(run.generator, gen)
        sets["gaussian-fit"] = _decode(model.decoder, _gaussian_fit(run.codes, n, seed))
        g = torch.Generator().manual_seed(seed)
        sets["gaussian-noise"] = _decode(model.decoder, torch.randn(n, cfg.ae.latent_dim, generator=g))
    if cfg.ae.model != "ae":
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            sets["model-sampler"] = torch.cat([model.sample(min(512, n - i), generator=g) for i in range(0, n, 512)])
    if cfg.eval.sets is not None:
        unknown = sorted(set(cfg.eval.sets) - set(sets))
        if unknown:
            raise ValueError(f"eval.sets: this run cannot make {unknown}; it makes {sorted(sets)}")
        sets = {k: v for k, v in sets.items() if k in cfg.eval.sets}
    if not run.dataset.is_image:  # vector data is not squashed into [0, 1]
        return sets
    return {k: v.clamp(0, 1) for k, v in sets.items()}


def evaluate_run(run: "Run") -> dict[str, Any]:
    from vegan import report
    from vegan.data import load_dataset
    from vegan.metrics import evaluate_sets, grid_metrics

    cfg = run.cfg
    out = run.dir("eval")
    test = load_dataset(cfg.data.model_copy(update={"split": "test", "limit": cfg.eval.n_samples}))
    n = len(test)
    sets = sample_sets(run, test.data)
    figures: dict[str, str] = {}
    extra: dict[str, str] = {}

    if run.dataset.is_image:
        metrics = evaluate_sets(
            test.data, sets, cfg.eval, cache=run.storage.sub("cache"), real_hash=test.content_hash(),
            labels=test.labels, progress=run.progress,
        )
        for name, images in {"real": test.data, **sets}.items():
            rel = f"samples-{name}.png"
            report.save_image_grid(out, rel, images[:64], nrow=8)
            figures[f"samples: {name}"] = rel
        if "ae-ot" in sets:
            report.nearest_neighbour_grid(out, "nearest-neighbours.png", sets["ae-ot"][:8], run.dataset.data, k=5)
            figures["AE-OT samples next to their nearest training images"] = "nearest-neighbours.png"
    else:
        real = test.data.numpy()
        metrics = {"real": grid_metrics(real)}
        metrics.update({name: grid_metrics(v.numpy()) for name, v in sets.items()})
        report.plot_grid2d(out, "grid2d.png", real, {k: v.numpy() for k, v in sets.items()})
        figures["2-D grid: real and generated"] = "grid2d.png"

    if run.has_encoder():
        report.plot_codes_pca(out, "codes-pca.png", run.codes, run.generated_codes[:n], labels=run.dataset.labels)
        figures["codes (PCA) with generated codes"] = "codes-pca.png"
        ot_info = run.manifest.done_info("ot")
        history = _ot_history(run)
        if history:
            report.plot_ot_history(out, "ot-convergence.png", history)
            figures["OT convergence"] = "ot-convergence.png"
        gen_info = run.manifest.done_info("generate")
        extra["OT solve"] = (
            f"converged: {ot_info.get('converged')}, iterations: {ot_info.get('iterations')}, "
            f"marginal error: {ot_info.get('marginal_error')}, generation rejection rate: "
            f"{gen_info.get('rejection_rate', float('nan')):.3f}"
        )
    extra["Run"] = f"preset/name: {cfg.name}; dataset: {cfg.data.name}; model: {cfg.ae.model}; keys: {run.keys}"
    report.write_report(out, metrics, figures, extra)
    return {"metrics": metrics, "report": out.uri("report.md")}


def _ot_history(run: "Run") -> list[dict]:
    from vegan.ot import load_result

    try:
        return list(load_result(run.dir("ot")).history)
    except FileNotFoundError:
        return []


def make_evaluate_fn(data_cfg, eval_cfg, cache=None, progress: bool = False):
    """``{name: samples} -> {name: metrics}`` against the held-out split of ``data_cfg``.

    Images get :func:`vegan.metrics.evaluate_sets`; vector data (the 2-D grid)
    gets :func:`vegan.metrics.grid_metrics`. Used by the compare flow so every
    model is scored by exactly the same code as the pipeline's eval stage.
    """
    from vegan.data import load_dataset
    from vegan.metrics import evaluate_sets, grid_metrics

    test = load_dataset(data_cfg.model_copy(update={"split": "test", "limit": eval_cfg.n_samples}))

    def evaluate_fn(sets: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        if not test.is_image:
            return {name: grid_metrics(np.asarray(v.detach().numpy())) for name, v in sets.items()}
        return evaluate_sets(
            test.data, {k: v.detach().clamp(0, 1) for k, v in sets.items()}, eval_cfg, cache=cache,
            real_hash=test.content_hash(), labels=test.labels, progress=progress,
        )

    return evaluate_fn
