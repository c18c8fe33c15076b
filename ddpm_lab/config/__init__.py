"""Hydra: where the configs live, resolvers, building objects from composed configs, the checks that span
sections, the run folder (creation, lock, clean-up of failed launches), resume, the loggers' table and the Hydra
callbacks; what ``sample``/``evaluate`` ask of a conditional checkpoint (guidance) and the real images ``evaluate``
compares with (real_images). Entry points compose with it."""

from ddpm_lab.config.build import build, build_all, build_components, build_module, stored_config
from ddpm_lab.config.checks import check_sampler, check_train_config, pick_device
from ddpm_lab.config.location import config_dir
from ddpm_lab.config.resolvers import register_resolvers, run_name

register_resolvers()

__all__ = [
    "build",
    "build_all",
    "build_components",
    "build_module",
    "check_sampler",
    "check_train_config",
    "config_dir",
    "pick_device",
    "register_resolvers",
    "run_name",
    "stored_config",
]
