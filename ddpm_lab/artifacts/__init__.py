"""What ddpm_lab writes and reads back: the checkpoint format, the allow-list for configs read from disk,
atomic writes, images, GIFs and figures, and the guard that refuses to overwrite. Plain PyTorch."""

from ddpm_lab.artifacts.checkpoint import read_checkpoint
from ddpm_lab.artifacts.trained_model import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model", "read_checkpoint"]
