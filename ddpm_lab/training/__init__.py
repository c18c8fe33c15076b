"""Training with PyTorch Lightning: the LightningModule, EMA and post-hoc EMA, callbacks (sample grids, strips,
run summary, FID, preemption, start-up summary, checkpoint retention), learning-rate schedules, logging to any
logger and atomic
checkpoint IO. Imports neither Hydra nor OmegaConf."""

from ddpm_lab.training.callbacks import DiffusionStrips, RunSummary, SampleGrid
from ddpm_lab.training.checkpoint_io import AtomicCheckpointIO
from ddpm_lab.training.ema import EMA
from ddpm_lab.training.fid import FIDCallback
from ddpm_lab.training.loggers import MLFlowFileLogger
from ddpm_lab.training.lr_schedules import ConstantLR, CosineLR, LinearLR, auto_warmup
from ddpm_lab.training.module import DiffusionModule, NonFiniteLossError
from ddpm_lab.training.posthoc_ema import PosthocEMA
from ddpm_lab.training.preemption import PreemptionGuard
from ddpm_lab.training.retention import RunCheckpoint
from ddpm_lab.training.summary import StartupSummary
from ddpm_lab.training.throughput import Throughput

__all__ = [
    "AtomicCheckpointIO",
    "ConstantLR",
    "CosineLR",
    "DiffusionModule",
    "DiffusionStrips",
    "EMA",
    "FIDCallback",
    "LinearLR",
    "MLFlowFileLogger",
    "NonFiniteLossError",
    "PosthocEMA",
    "PreemptionGuard",
    "RunCheckpoint",
    "RunSummary",
    "SampleGrid",
    "StartupSummary",
    "Throughput",
    "auto_warmup",
]
