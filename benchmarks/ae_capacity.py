"""Which autoencoder? Reconstruction FID against latent dimension and other AE settings (issue 22).

AE-OT can score no better than its decoder: its samples are decodings of codes, and the
reconstructions of training images are the best such decodings there are. So the autoencoder is
chosen by its reconstruction FID, which costs an ``ae`` stage and a few thousand Inception images,
not a whole protocol run. Each variant (a list of ``--set`` overrides on top of the config) trains
its own autoencoder in ``<storage>/<label>`` with the pipeline's own ``ae`` stage (so it resumes, and a
variant already trained is not trained again), then its reconstructions of the first
``--n-samples`` training images are scored against the config's reference (the whole test split
under ``eval.protocol: standard``) with the config's extractor. All variants share
``<storage>/cache``, so the reference features are computed once.

  python benchmarks/ae_capacity.py --config configs/mnist-fid10k.yaml --storage /work/runs/ae-capacity \\
      --set ae.steps=2000 --variant ld16:ae.latent_dim=16 --variant ld32:ae.latent_dim=32 \\
      --variant ld64:ae.latent_dim=64 --json ae-capacity.json --png docs/img/ae-capacity.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``label:key=value,key=value`` -> ``(label, ["key=value", ...])``."""
    label, sep, sets = text.partition(":")
    if not sep or not label or "/" in label:
        raise argparse.ArgumentTypeError(f"--variant wants label:key=value[,key=value...], got {text!r}")
    return label, [s for s in sets.split(",") if s]


def score_variant(cfg, storage: str, cache_url: str, n_samples: int, progress: bool) -> dict:
    """Train (or find trained) this variant's autoencoder; FID etc. of its reconstructions."""
    from vegan.evaluation import check_extractor, eval_roles
    from vegan.metrics import TrainingRows, evaluate_sets, feature_space
    from vegan.metrics.sources import Reconstructed, digest
    from vegan.pipeline import run_pipeline
    from vegan.stages.context import Run
    from vegan.storage import Storage

    t0 = time.perf_counter()
    run_pipeline(cfg, storage, until="ae", progress=progress)
    train_seconds = time.perf_counter() - t0
    run = Run(cfg, Storage(storage), progress=progress)
    eval_cfg = cfg.eval.model_copy(update={"n_samples": n_samples, "diagnostic_samples": n_samples})
    train = run.dataset
    check_extractor(cfg.data, eval_cfg, train.labels is not None)
    roles = eval_roles(train, cfg.data, eval_cfg)
    cache = Storage(cache_url)
    space = feature_space(eval_cfg, TrainingRows(train, train.labels, roles.train_exclude), cache=cache)
    source = Reconstructed(run.model, roles.reconstructed, digest("ae-capacity", run.keys["ae"], n_samples))
    t1 = time.perf_counter()
    m = evaluate_sets(roles.reference, {"reconstructions": source}, eval_cfg, cache=cache, space=space,
                      progress=progress)["reconstructions"]  # fmt: skip
    done = run.manifest.done_info("ae")
    return {
        "ae_key": run.keys["ae"],
        "ae": cfg.ae.model_dump(include={"arch", "latent_dim", "width", "steps", "batch_size", "lr", "precision"}),
        "final_loss": done["last"]["loss"],
        "ae_stage_seconds": done["seconds"],  # of the run that trained it (a resumed one: since its resume)
        "train_call_seconds": round(train_seconds, 1),
        "score_seconds": round(time.perf_counter() - t1, 1),
        "n_samples": n_samples,
        "n_reference": roles.n_reference,
        "extractor": space.info.get("extractor"),
        **{k: float(m[k]) for k in ("fid", "kid_mean", "precision", "recall") if k in m},
    }


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.bar([r["label"] for r in rows], [r["fid"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['fid']:.1f}", (i, r["fid"]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("reconstruction FID")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=None, help="starting config (as vegan run)")
    p.add_argument("--config", help="the runs' YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every variant")
    p.add_argument("--variant", action="append", type=parse_variant, required=True,
                   metavar="LABEL:KEY=VALUE[,...]", help="one autoencoder to train and score")  # fmt: skip
    p.add_argument("--storage", required=True, help="folder holding one run folder per variant and the shared cache")
    p.add_argument("--n-samples", type=int, default=2000, help="training images reconstructed and scored")
    p.add_argument("--json", type=Path, help="write the table here")
    p.add_argument("--png", type=Path, help="write a bar plot of the FIDs here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from vegan.config import load_config

    labels = [label for label, _ in args.variant]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"--variant labels must differ, got {labels}")
    root = args.storage.rstrip("/")
    rows = []
    for label, sets in args.variant:
        try:
            cfg = load_config(preset=args.preset, path=args.config, overrides=[*args.set, *sets])
        except (OSError, ValueError) as exc:  # a missing file, an unknown or mistyped key: one line, no traceback
            raise SystemExit(f"ae_capacity: variant {label}: {exc}") from None
        row = {"label": label, "overrides": sets,
               **score_variant(cfg, f"{root}/{label}", f"{root}/cache", args.n_samples, not args.quiet)}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = {"config": args.config or args.preset, "overrides": args.set, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")
    if args.png:
        r0 = rows[0]
        plot(rows, args.png, f"{cfg.data.name}: FID of {r0['n_samples']:,} reconstructions vs "
                             f"{r0['n_reference']:,} reference images ({r0['extractor']})")  # fmt: skip
        print(f"plot: {args.png}")
    return table


if __name__ == "__main__":
    main()
    sys.exit(0)
