"""The loggers' table: every logger a config can choose has its row, and the run folder's clean-up knows each
logger's folder once."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ddpm_lab.config.loggers import LOGGERS, logger_folders, logger_row
from helpers import REPO_ROOT

LOGGER_CONFIGS = sorted((REPO_ROOT / "configs" / "logger").glob("*.yaml"))


@pytest.mark.parametrize("path", LOGGER_CONFIGS, ids=lambda p: p.stem)
def test_every_logger_config_has_a_row(path: Path):
    nodes = [node for key, node in OmegaConf.load(path).items() if key != "defaults"]
    for node in nodes:
        assert logger_row(node) is not None, f"{path.name}: add {node._target_} to LOGGERS in config/loggers.py"


def test_a_logger_outside_the_table_has_no_row_and_each_folder_is_named_once():
    assert logger_row(OmegaConf.create({"_target_": "somewhere.NeptuneLogger"})) is None
    assert logger_row(None) is None
    folders = logger_folders()
    assert sorted(folders) == sorted({row.folder for row in LOGGERS.values()}) and len(folders) == len(set(folders))
