"""Optional Lightning callback: FID (and KID) of a few samples every N steps, logged as ``fid/fid``, ``fid/kid``.

Off by default; turn it on with ``callbacks=fid`` (see ``configs/callbacks/fid.yaml``). With a small ``n``
the numbers are noisy and biased upwards: use them to follow a run, and ``ddpm_lab.evaluate`` to report.
Under DDP the work is shared: each rank draws and extracts its share of the ``n`` images (whole batches, see
``ddpm_lab.ranks``), the features are gathered in image order, rank 0 computes FID once and every rank logs that
value, the one a single process would get.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytorch_lightning as pl
import torch

from ddpm_lab.artifacts.cache_dir import FID_STATS, cache_folder
from ddpm_lab.artifacts.images import to_uint8
from ddpm_lab.diffusion import Sampler
from ddpm_lab.errors import check_number
from ddpm_lab.metrics import (
    ClassifierFeatures,
    FeatureExtractor,
    FeatureSet,
    chunks,
    extract_features,
    gather_features,
    scores,
)
from ddpm_lab.ranks import Ranks
from ddpm_lab.training.callbacks import sample_images

log = logging.getLogger(__name__)


def trainer_ranks(trainer: pl.Trainer) -> Ranks:
    """The trainer's processes as :class:`~ddpm_lab.ranks.Ranks` (its DDP strategy set up their process group)."""
    return Ranks(trainer.global_rank, trainer.world_size, trainer.strategy.root_device)


class FIDCallback(pl.Callback):
    """Every ``every_n_steps`` optimizer steps, sample ``n`` images and score them against training images.

    Args:
        features: the feature extractor (a ``features`` config option).
        every_n_steps: interval in optimizer steps (> 0).
        n: generated images per evaluation; also the number of real training images used.
        batch_size: sampling and feature-extraction batch.
        sampler: overrides the module's sampler (a respaced chain keeps this affordable).
        seed: fixed noise, so successive scores differ only by the weights.
    """

    def __init__(
        self,
        features: FeatureExtractor,
        every_n_steps: int = 5000,
        n: int = 1000,
        batch_size: int = 100,
        sampler: Sampler | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.every_n_steps = check_number(every_n_steps, "callbacks.fid.every_n_steps", int, low=1)
        self.n = check_number(n, "callbacks.fid.n", int, low=2)
        self.batch_size = check_number(batch_size, "callbacks.fid.batch_size", int, low=1)
        self.features = features
        self.sampler, self.seed = sampler, seed
        self.real: FeatureSet | None = None
        self.last: dict[str, Any] | None = None  # the latest scores, the same on every rank
        self._last_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """``features=classifier``: train it (or read it back) on the labelled training images, before step 1."""
        if isinstance(self.features, ClassifierFeatures) and self.features.net is None:
            dm = trainer.datamodule
            folder = cache_folder(getattr(dm, "cache_dir", None), FID_STATS)
            self.features.fit(dm.train_images, dm.train_labels, folder, source=f"dataset {dm.name}")
            log.info("%s", self.features.summary())

    def real_features(self, trainer: pl.Trainer, ranks: Ranks) -> FeatureSet | None:
        """Features of ``n`` training images (uint8, already in memory), computed once per run, each rank its share."""
        if self.real is None:
            images = trainer.datamodule.train_images
            keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))[: self.n]
            share = ranks.share(len(keep), self.batch_size)
            part = None
            with ranks.together():
                if share:
                    mine = images[keep[share.start : share.stop]]
                    part = extract_features(self.features, chunks(mine, self.batch_size), ranks.device)
            self.real = gather_features(ranks, part, len(keep), self.batch_size)
        return self.real

    def fake_features(self, pl_module: pl.LightningModule, ranks: Ranks) -> FeatureSet | None:
        """Features of ``n`` uint8 samples of the module's sampling weights, from ``seed``, each rank its share."""
        share = ranks.share(self.n, self.batch_size)
        part = None
        with ranks.together():
            if share:
                images = sample_images(pl_module, len(share), self.sampler, self.seed, self.batch_size, indices=share)
                part = extract_features(self.features, chunks(to_uint8(images), self.batch_size), ranks.device)
        return gather_features(ranks, part, self.n, self.batch_size)

    def score(self, trainer: pl.Trainer, pl_module: pl.LightningModule, ranks: Ranks) -> dict[str, Any]:
        """FID and KID of the module's samples now, computed on rank 0 and handed to every rank."""
        real, fake = self.real_features(trainer, ranks), self.fake_features(pl_module, ranks)
        result = scores(real, fake, kid_subsets=10, seed=self.seed) if ranks.is_zero else None
        return ranks.from_rank_zero(result)

    def single_rank(self) -> FIDCallback:
        """A copy that scores on this rank alone, from scratch (what one process computes)."""
        alone = copy.copy(self)
        alone.real = None
        return alone

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or step == self._last_step or trainer.sanity_checking:
            return
        self._last_step = step
        result = self.last = self.score(trainer, pl_module, trainer_ranks(trainer))
        pl_module.log("fid/fid", result["fid"])  # the same value on every rank: a best_fid checkpoint works on all
        pl_module.log("fid/kid", result["kid_mean"])
        log.info(
            "step %d: FID %.3f, KID %.5f (n=%d generated vs %d training images, %s features)",
            step,
            result["fid"],
            result["kid_mean"],
            result["n_fake"],
            result["n_real"],
            self.features.name,
        )
