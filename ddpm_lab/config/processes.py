"""The processes ``sample`` and ``evaluate`` run on: ``devices`` per node times ``num_nodes``, started and joined by
Lightning Fabric, the stack training runs on. On one machine Fabric re-runs the command line once per extra device
(its launcher is Hydra-aware: the extra processes get the run folder, ``hydra.output_subdir=null`` and the job name
``train_ddp_process_<i>``, so they log to ``train_ddp_process_<i>.log`` and write nothing else); under ``srun`` or
``torchrun`` it joins the processes the cluster started; on several machines each one's ``NODE_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` say where rank 0 is. The sharing code sees the result as a plain
:class:`~ddpm_lab.ranks.Ranks`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning_fabric import Fabric
from lightning_fabric.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from omegaconf import DictConfig

from ddpm_lab.config.checks import check_integer, pick_device
from ddpm_lab.errors import ConfigError
from ddpm_lab.ranks import Ranks

LAUNCHED_BY = "DDPM_LAB_LAUNCHED_BY"  # the pid of the process that started this machine's other ranks


@dataclass(frozen=True)
class Processes:
    """Where ``sample``/``evaluate`` compute: ``device`` (its type is the accelerator; an index pins one GPU),
    ``devices`` processes per node, ``num_nodes`` nodes."""

    device: torch.device
    devices: int = 1
    num_nodes: int = 1

    @property
    def world(self) -> int:
        return self.devices * self.num_nodes


def processes_settings(cfg: DictConfig) -> Processes:
    """``device``, ``devices`` and ``num_nodes`` checked together (one line naming the key, before any work)."""
    device = pick_device(str(cfg.device))
    check_integer(cfg, "devices", low=1)
    check_integer(cfg, "num_nodes", low=1)
    devices, num_nodes = int(cfg.devices), int(cfg.num_nodes)
    if devices > 1 and device.index is not None:
        raise ConfigError(
            f"device={cfg.device} picks one GPU, but devices={devices}: pass device=cuda (GPUs 0 … {devices - 1}; "
            "CUDA_VISIBLE_DEVICES picks others) or devices=1"
        )
    available = torch.cuda.device_count() if device.type == "cuda" else (os.cpu_count() or 1)
    if devices > available:
        kind = "GPUs" if device.type == "cuda" else "CPU cores"
        raise ConfigError(f"devices={devices} but this machine has {available} {kind}: use devices<={available}")
    if devices * num_nodes > 1 and _is_multirun():
        raise ConfigError(
            "multirun (-m) runs each job in one process: the extra processes of devices/num_nodes would each "
            "re-run the whole sweep; use devices=1 num_nodes=1, or run each setting on its own"
        )
    return Processes(device, devices, num_nodes)


def _is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def start_ranks(processes: Processes) -> Ranks:
    """Start (or join) the processes and return this one's :class:`~ddpm_lab.ranks.Ranks`; one process needs no
    Fabric. Call it once every check is done: the processes it starts run the command from the beginning."""
    if processes.world == 1:
        return Ranks(device=processes.device)
    fabric = Fabric(
        accelerator=processes.device.type,
        devices=processes.devices,
        num_nodes=processes.num_nodes,
        strategy="ddp",
    )
    strategy = fabric.strategy
    starts_others = isinstance(strategy.launcher, _SubprocessScriptLauncher) and not (
        strategy.cluster_environment.creates_processes_externally
    )
    if starts_others and processes.devices > 1:
        os.environ[LAUNCHED_BY] = str(os.getpid())  # the processes it starts inherit it
    fabric.launch()
    started_here = os.environ.get(LAUNCHED_BY) == str(os.getppid())
    if fabric.global_rank:
        _console_warnings_only()
    # the launcher here reads no exit status but rank 0's; a cluster (srun, torchrun) reads every one
    return Ranks(fabric.global_rank, fabric.world_size, fabric.device, quiet_status=0 if started_here else 2)


def _console_warnings_only() -> None:
    """Ranks other than 0 log to their own file; on the console only warnings, so lines are not printed twice."""
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:
            handler.setLevel(logging.WARNING)
