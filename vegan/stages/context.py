"""``Run``: one run folder plus its config, the context every stage function gets.

It implements :class:`vegan.stages.base.StageContext`: output locations by stage
key, the run's Dask client (``client``: one for the whole run, see
:mod:`vegan.cluster`), and the outputs of finished stages (dataset, model,
codes, ...) loaded once and cached. A notebook can open a finished run with ``Run(cfg, url)`` to load them.
"""

from __future__ import annotations

import copy
from functools import cached_property

import numpy as np
import torch

from vegan.config import PipelineConfig
from vegan.data import Dataset, load_dataset
from vegan.latents import load_codes
from vegan.manifest import Manifest
from vegan.stages.base import StageError
from vegan.storage import Storage


class Run:
    """One run folder plus its config."""

    def __init__(self, cfg: PipelineConfig, storage: Storage | str, progress: bool = True, client=None):
        self.cfg = cfg
        self.client = client  # the run's Dask client (vegan.cluster.connect), or None: run in this process
        self.storage = storage if isinstance(storage, Storage) else Storage(storage)
        self.manifest = Manifest(self.storage, cfg)
        self.keys = self.manifest.keys
        self.progress = progress

    def dir(self, stage: str) -> Storage:
        return self.storage.sub(self.manifest.output(stage))

    def zarr_store(self, stage: str, read_only: bool = False):
        return self.storage.zarr_store(self.manifest.output(stage), read_only=read_only)

    def require(self, stage: str) -> None:
        if not self.manifest.is_done(stage):
            raise StageError(
                f"stage {stage!r} ({self.keys[stage]}) has not finished in {self.storage.url}: run it first"
            )

    def has_encoder(self) -> bool:
        return self.cfg.ae.model != "wgan-gp"

    def resources(self, stage: str) -> dict[str, int] | None:
        """Dask resources the tasks of ``stage`` request (``{"GPU": 1}`` when ``cluster.gpu_stages`` lists it)."""
        return {"GPU": 1} if stage in self.cfg.cluster.gpu_stages else None

    def forget(self) -> None:
        """Drop the loaded outputs of finished stages (after one of them rewrote a chunk)."""
        for name in ("codes", "codes_store", "model", "generator"):
            self.__dict__.pop(name, None)

    # ---------------------------------------------------------- shared inputs
    @cached_property
    def dataset(self) -> Dataset:
        return load_dataset(self.cfg.data)

    @cached_property
    def model(self):
        """The trained autoencoder (or cookbook model), on CPU, in eval mode."""
        from vegan.models import build_model

        self.require("ae")
        saved = self.dir("ae").load_torch("model.pt")
        model = build_model(self.cfg.ae, tuple(saved["shape"]))
        model.load_state_dict(saved["state_dict"])
        return model.eval()

    @cached_property
    def codes(self) -> np.ndarray:
        self.require("latents")
        return load_codes(self.zarr_store("latents", read_only=True), expected_dim=self.cfg.ae.latent_dim)

    @cached_property
    def codes_store(self):
        """Where the codes live, for Dask workers that read them themselves (:class:`vegan.ot.targets.ZarrTargets`).

        Reads metadata and the chunk completion markers only, never the codes: the OT and
        generate stages use it on a cluster so that this process holds O(n) floats at most.
        """
        from vegan.latents import check_store
        from vegan.ot.targets import ZarrTargets

        self.require("latents")
        check_store(self.zarr_store("latents", read_only=True), expected_dim=self.cfg.ae.latent_dim)
        return ZarrTargets.open(self.dir("latents").uri("codes"), self.storage.storage_options)

    @cached_property
    def generator(self) -> torch.nn.Module:
        """The AE-OT-GAN generator when fine-tuning ran, else the plain decoder."""
        decoder = copy.deepcopy(self.model.decoder)
        if self.cfg.gan.enabled and self.cfg.gan.steps > 0:
            self.require("gan")
            decoder.load_state_dict(self.dir("gan").load_torch("generator.pt")["state_dict"])
        return decoder.eval()
