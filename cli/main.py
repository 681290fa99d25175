"""The ``vegan`` command: run the pipeline, ingest a dataset, show or verify a run, serve deployments.

``vegan run`` checks its inputs (:func:`vegan.pipeline.preflight`) before anything
starts, then goes through the Prefect flow (states, logs, the UI) unless
``--no-prefect`` is given, in which case the same stage functions run directly.
SIGTERM stops a run at once: the running stage checkpoints (trainers) or stops
(its outputs are atomic), is marked interrupted, and the same command resumes it.
This module imports Prefect lazily so ``vegan status`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any, NoReturn

from vegan.config import load_config, recorded_config
from vegan.presets import PRESETS
from vegan.stages.registry import STAGE_NAMES

EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_SIGINT = 128 + signal.SIGINT


class Terminated(BaseException):
    """SIGTERM arrived (a ``BaseException``, like KeyboardInterrupt: a shutdown, not an error)."""


def _on_sigterm(signum, frame) -> NoReturn:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the shutdown finish
    raise Terminated()


def _prefect_env() -> None:
    """Offline-friendly Prefect defaults (each can be overridden by the environment)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "vegan")
    # The temporary server's SQLite database lives in PREFECT_HOME: a fresh clone has no such folder yet.
    home = os.environ.get("PREFECT_HOME")
    if home:
        os.makedirs(os.path.expanduser(home), exist_ok=True)


def _print_status(status: dict[str, dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    width = max(len(s) for s in STAGE_NAMES)
    for stage, entry in status.items():
        print(f"{stage:<{width}}  {entry['status']:<11} {entry['key']:<22} {entry['output']}")
        if entry.get("error"):
            print(f"{'':<{width}}  error: {entry['error']}")


def cmd_run(args: argparse.Namespace) -> int:
    preset = args.preset or (None if args.config else "demo")
    cfg = load_config(preset=preset, path=args.config, overrides=args.set)
    storage = args.storage or os.path.join("runs", preset or cfg.name)
    from vegan.pipeline import preflight, run_pipeline
    from vegan.storage import Storage

    # Both paths check the input first (one line on bad input, before any stage starts); the
    # flow checks again, as it must when triggered from the UI, but here before the server starts.
    if args.no_prefect:
        results = run_pipeline(cfg, storage, until=args.until, progress=not args.quiet)
    else:
        storage = preflight(cfg, storage, args.until).url
        _prefect_env()
        from cli.server import prefect_api
        from flows.pipeline import aeot_pipeline

        with prefect_api():
            results = aeot_pipeline(config=cfg, storage=storage, until=args.until, progress=not args.quiet)
    from vegan.manifest import Manifest

    store = Storage(storage)

    print(f"\nrun folder: {store.url}")
    _print_status(Manifest(store, cfg).status(), as_json=False)
    if "eval" in results:
        print(f"\nreport:  {results['eval'].get('output')}/report.md")
        _print_metrics(results["eval"].get("metrics", {}))
    return 0


def _print_metrics(metrics: dict[str, dict[str, float]]) -> None:
    if not metrics:
        return
    preferred = (
        "fid",
        "kid_mean",
        "precision",
        "recall",
        "density",
        "coverage",
        "modes_covered",
        "high_quality",
        "reverse_kl",
    )
    cols = [c for c in preferred if any(c in m for m in metrics.values())]
    print(f"\n{'set':<18}" + "".join(f"{c:>14}" for c in cols))
    for name, m in metrics.items():
        print(f"{name:<18}" + "".join(f"{m.get(c, float('nan')):>14.4g}" for c in cols))


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = load_config(preset=args.preset, path=args.config, overrides=args.set)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    storage = args.storage or os.path.join("runs", f"compare-{args.preset or cfg.name}")
    if args.no_prefect:
        from vegan.compare import compare_models
        from vegan.evaluation import make_evaluate_fn
        from vegan.storage import Storage

        store = Storage(storage)
        store.check_writable()
        result = compare_models(
            cfg.data,
            models,
            cfg.ae,
            store,
            make_evaluate_fn(cfg.data, cfg.eval, cache=store.sub("cache")),
            n_samples=args.n_samples,
            progress=True,
        )
    else:
        _prefect_env()
        from cli.server import prefect_api
        from flows.compare import compare_models_flow

        with prefect_api():
            result = compare_models_flow(
                models=models, data=cfg.data, budget=cfg.ae, eval=cfg.eval, storage=storage, n_samples=args.n_samples
            )
    print()
    _print_metrics(result["metrics"])
    for name, uri in result["files"].items():
        print(f"{name:<12} {uri}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from vegan.manifest import Manifest
    from vegan.storage import Storage

    store = Storage(args.storage)
    if not store.exists("manifest.json"):
        print(f"no run at {store.url} (manifest.json not found)", file=sys.stderr)
        return 1
    cfg = recorded_config(store.read_json("manifest.json")["config"])
    _print_status(Manifest(store, cfg).status(), args.json)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check the dataset, every stage store, checkpoint and final file; mark damage for the next run."""
    from vegan.manifest import RunLock
    from vegan.storage import Storage
    from vegan.verify import check_run, mark_damaged, summary, table

    store = Storage(args.storage)
    if not store.exists("manifest.json"):
        print(f"no run at {store.url} (manifest.json not found)", file=sys.stderr)
        return 1
    cfg = recorded_config(store.read_json("manifest.json")["config"])
    with RunLock(store):  # marks are written only while no run writes here
        findings = check_run(store, cfg)
        actions = [] if args.check_only else mark_damaged(store, cfg, findings)
    print(table(findings))
    counts = summary(findings)
    print(f"\n{counts['checked']} checked, {counts['damaged']} damaged")
    for line in actions:
        print(f"marked: {line}")
    if any(f.damaged and f.kind == "dataset" for f in findings):
        print(
            "the dataset is an input and is never rewritten: ingest it again into a new folder or restore it; "
            "`vegan run` refuses to start until then",
        )
    elif counts["damaged"]:
        print(
            "rerun the same `vegan run` command: it recomputes only what is marked"
            if actions
            else "run `vegan verify` without --check-only to mark it, then rerun `vegan run`"
        )
    return 1 if counts["damaged"] else 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from vegan.cluster import connect
    from vegan.config import ClusterConfig
    from vegan.data.ingest import ingest, parse_resize

    cluster = ClusterConfig(address=args.cluster, n_workers=args.n_workers)
    resize = parse_resize(args.resize)  # a bad --resize fails before any cluster starts
    with connect(cluster) as client:
        info = ingest(
            args.src,
            args.dest,
            chunk_rows=args.chunk_rows,
            resize=resize,
            client=client,
            progress=not args.quiet,
            split=args.split,
            limit=args.limit,
        )
    print(
        f"{args.dest}: {info['n']} rows of shape {tuple(info['shape'][1:])} {info['dtype']}, "
        f"{info['chunks_written']} chunks written, {info['chunks_skipped']} already done "
        f"({info['seconds']:.1f} s)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    _prefect_env()
    from flows import deploy

    common = dict(
        preset=args.preset,
        config_path=args.config,
        overrides=args.set,
        storage=args.storage,
        cron=args.cron,
        api_url=args.api,
    )
    if args.deploy:
        ids = deploy.deploy_all(work_pool=args.work_pool, gpu_work_pool=args.gpu_work_pool, **common)
        print(
            f"registered {len(ids)} deployments on work pool {args.work_pool!r}"
            + (f" (GPU stages on {args.gpu_work_pool!r})" if args.gpu_work_pool else "")
        )
        return 0
    deploy.serve_deployments(**common)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vegan", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run (or resume) the AE-OT pipeline")
    r.add_argument("--preset", choices=sorted(PRESETS), help="starting config (default: demo unless --config)")
    r.add_argument("--config", help="YAML file with config values (applied over the preset)")
    r.add_argument("--storage", help="run folder: any fsspec URL (default ./runs/<preset>)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. ot.tol=0.2")
    r.add_argument(
        "--until", choices=STAGE_NAMES, default=STAGE_NAMES[-1], help="run this stage and the stages upstream of it"
    )
    r.add_argument("--no-prefect", action="store_true", help="run the stages directly, without Prefect")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", help="train several cookbook models on one budget and compare them")
    c.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="data, budget and eval settings")
    c.add_argument("--config", help="YAML file applied over the preset")
    c.add_argument("--models", default="ae,vae,wae-mmd,wae-gan,aae,wgan-gp", help="comma-separated model names")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. ae.steps=500")
    c.add_argument("--storage", help="output folder URL (default ./runs/compare-<preset>)")
    c.add_argument("--n-samples", type=int, default=500, help="samples per model for the metrics")
    c.add_argument("--no-prefect", action="store_true")
    c.set_defaults(func=cmd_compare)

    s = sub.add_parser("status", help="show each stage's status, key and output")
    s.add_argument("--storage", required=True, help="run folder URL")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    f = sub.add_parser("verify", help="check every store, checkpoint and file of a run; exit 1 on damage")
    f.add_argument("--storage", required=True, help="run folder URL")
    f.add_argument("--check-only", action="store_true", help="report damage without marking it for the next run")
    f.set_defaults(func=cmd_verify)

    i = sub.add_parser("ingest", help="convert an image folder, .npz or named dataset into a chunked Zarr dataset")
    i.add_argument("src", help="image folder URL (recursive, PNG/JPEG), .npz URL, or a dataset name (digits, mnist...)")
    i.add_argument("dest", help="Zarr URL to write (any fsspec URL), e.g. s3://bucket/data/mnist.zarr")
    i.add_argument("--chunk-rows", type=int, default=4096, help="rows per chunk (unit of parallelism and resume)")
    i.add_argument("--resize", help="HxW, e.g. 64x64 (needed when image sizes differ)")
    i.add_argument("--split", choices=["train", "test"], default="train", help="split of a named dataset")
    i.add_argument("--limit", type=int, help="ingest at most this many examples (first N)")
    i.add_argument("--cluster", default="none", help="none, local (a LocalCluster) or a scheduler tcp://host:port")
    i.add_argument("--n-workers", type=int, default=2, help="workers of --cluster local")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=cmd_ingest)

    v = sub.add_parser("serve", help="serve (or register) the Prefect deployments")
    v.add_argument("--api", help="Prefect API URL (default: PREFECT_API_URL)")
    v.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="default parameters of the deployments")
    v.add_argument("--config", help="YAML file applied over the preset")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--storage", help="default run folder URL of the deployments")
    v.add_argument("--cron", default=None, help="cron schedule for the full pipeline, e.g. '0 2 * * *'")
    v.add_argument("--deploy", action="store_true", help="register deployments on a work pool instead of serving")
    v.add_argument("--work-pool", default="cpu", help="work pool for --deploy")
    v.add_argument("--gpu-work-pool", default=None, help="work pool for the heavy stages (ae, ot, gan)")
    v.set_defaults(func=cmd_serve)
    return p


def _config_error(error: dict) -> str:
    """One pydantic error as ``where: what (got value)``; a validator's own message (a ``ValueError`` that
    already names the field and what to do, e.g. a retired setting) is shown as it was written."""
    where = ".".join(map(str, error["loc"]))
    if error["type"] == "value_error":
        message = error["msg"].removeprefix("Value error, ")
        return message if not where or message.startswith(where) else f"{where}: {message}"
    return f"{where}: {error['msg']} (got {error['input']!r})"


def _one_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return "invalid config: " + "; ".join(_config_error(e) for e in exc.errors())
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resumable = args.func in (cmd_run, cmd_compare)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if resumable else None
    try:
        return args.func(args)
    except SystemExit:
        raise
    except BaseException as exc:
        if os.environ.get("VEGAN_DEBUG"):
            raise
        from vegan.pipeline import is_interruption

        if is_interruption(exc):
            by_sigint = isinstance(exc, KeyboardInterrupt)
            how = "Ctrl-C" if by_sigint else "SIGTERM"
            print(
                f"vegan: interrupted ({how})" + (": rerun the same command to resume" if resumable else ""),
                file=sys.stderr,
            )
            return EXIT_SIGINT if by_sigint else EXIT_SIGTERM
        print(f"vegan: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
