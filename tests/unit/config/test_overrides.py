"""Recorded overrides and run configs are untrusted input (ddpm_lab.config.overrides)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpm_lab.config.overrides import (
    MAX_YAML_BYTES,
    check_known,
    check_override_form,
    check_places,
    read_overrides,
    read_yaml,
)
from ddpm_lab.config.resume import run_overrides
from ddpm_lab.errors import UnsafeConfigError

WHERE = Path("run/.hydra/overrides.yaml")


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("+callbacks.evil._target_=pickle.load", "adds a key"),
        ("+trainer.foo=1", "adds a key"),
        ("++trainer.max_steps=1", r"adds a key \(\+\+\)"),
        ("~callbacks.ema", "deletes a key"),
        ("model._target_=os.system", "instantiate key _target_"),
        ("callbacks.ema._partial_=true", "instantiate key _partial_"),
        ("model._args_=[1]", "instantiate key _args_"),
        ("dataset._recursive_=false", "instantiate key _recursive_"),
        ("dataset.root=${oc.env:HOME}", "interpolations and resolvers"),
        ("dataset.root=str(${now:%H})", "interpolations and resolvers"),
        ("paths.output_root=${paths.data_dir}", "interpolations and resolvers"),
        ("callbacks.ema={_target_: builtins.exec}", "instantiate key _target_"),
        ("model.channel_mults=[1,{_target_: os.system}]", "instantiate key _target_"),
        ("trainer.max_steps=1,2", "sweep"),
        ("trainer.max_steps=range(1,3)", "sweep"),
        ("model@trainer=unet_tiny", "moves config group model"),
        ("features@callbacks._target_.features=tiny", "instantiate key _target_"),
        ("trainer.max_steps=(", "unparsable"),
    ],
)
def test_a_hostile_override_is_refused_naming_file_and_override(override: str, reason: str):
    with pytest.raises(UnsafeConfigError, match=reason) as e:
        check_override_form(override, WHERE)
    assert str(WHERE) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "override", ["trainer.max_steps=10", "dataset=image_folder", "dataset.root=/data/x y", "callbacks.ema=null"]
)
def test_a_plain_override_passes_the_form_check(override: str):
    check_override_form(override, WHERE)


def test_keys_must_exist_after_the_group_choices(hydra_initialised):
    known = ["debug=default", "dataset=image_folder", "dataset.on_error=raise", "callbacks.progress_bar=null"]
    known += ["dataset.root=/x", "model=unet_tiny", "model.channel_mults=[1]", "callbacks=fid"]
    known += ["features@callbacks.fid.features=tiny"]
    check_known(known, dict.fromkeys(known, WHERE), "train")
    with pytest.raises(UnsafeConfigError, match="no key dataset.on_error"):  # mnist has no on_error
        check_known(["dataset.on_error=raise"], {"dataset.on_error=raise": WHERE}, "train")
    with pytest.raises(UnsafeConfigError, match="no key callbacks.evil.path"):
        check_known(["callbacks.evil.path=x"], {"callbacks.evil.path=x": WHERE}, "train")
    fid = "features@callbacks.fid.features=tiny"  # callbacks=default has no fid
    with pytest.raises(UnsafeConfigError, match=r"overrides.yaml: the recorded group .* cannot be replayed"):
        check_known([fid], {fid: WHERE}, "train")
    with pytest.raises(UnsafeConfigError, match="dataset has no option 'evil'"):
        check_known(["dataset=evil"], {"dataset=evil": WHERE}, "train")


def test_run_overrides_refuses_a_hostile_resume_record(tmp_path: Path, hydra_initialised):
    hydra_dir = tmp_path / ".hydra"
    (hydra_dir / "resume_2026-01-01_00-00-00").mkdir(parents=True)
    (hydra_dir / "overrides.yaml").write_text("- dataset=image_folder\n- dataset.root=/x\n")
    assert run_overrides(tmp_path) == ["dataset=image_folder", "dataset.root=/x"]
    later = hydra_dir / "resume_2026-01-01_00-00-00" / "overrides.yaml"
    later.write_text("- resume=/somewhere\n- +callbacks.evil._target_=pickle.load\n")
    (later.parent / "started").touch()  # the record of a resume that reached training is replayed, so checked
    with pytest.raises(UnsafeConfigError, match=r"resume_2026-01-01_00-00-00/overrides.yaml: refusing .*\+callbacks"):
        run_overrides(tmp_path)


def test_read_yaml_refuses_huge_files_and_aliases(tmp_path: Path):
    huge = tmp_path / "overrides.yaml"
    huge.write_text("- a=1\n" * (MAX_YAML_BYTES // 6 + 1))
    with pytest.raises(UnsafeConfigError, match="refusing to read it"):
        read_overrides(huge)
    laughs = tmp_path / "config.yaml"
    laughs.write_text("a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n")
    with pytest.raises(UnsafeConfigError, match="aliases"):
        read_yaml(laughs)
    listless = tmp_path / "o2.yaml"
    listless.write_text("a: 1\n")
    with pytest.raises(UnsafeConfigError, match="not a list of overrides"):
        read_overrides(listless)
    assert read_yaml(tmp_path / "o2.yaml") == {"a": 1}


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("callbacks.model_checkpoint.dirpath=/other_run/checkpoints", "callbacks.model_checkpoint.dirpath"),
        ("callbacks.model_checkpoint.filename=../../other_run/checkpoints/last", "callbacks.model_checkpoint.filename"),
        ("callbacks.model_checkpoint.filename=/other_run/checkpoints/last", "callbacks.model_checkpoint.filename"),
        ("callbacks.model_checkpoint.filename=~/last", "callbacks.model_checkpoint.filename"),
        ("logger.tensorboard.name=a/../../b", "logger.tensorboard.name"),
        ("logger.wandb.dir=/elsewhere", "logger.wandb.dir"),
        ("callbacks.best_fid.dirpath=/elsewhere", "callbacks.best_fid.dirpath"),
        ("callbacks.model_checkpoint={dirpath: /elsewhere, save_top_k: 1}", "callbacks.model_checkpoint.dirpath"),
        ("logger.tensorboard.save_dir=/elsewhere", "logger.tensorboard.save_dir"),
        ("logger.csv.name=../../other_run/csv", "logger.csv.name"),
        ("logger.csv.version=../x", "logger.csv.version"),
        ("logger.mlflow.tracking_uri=file:/elsewhere", "logger.mlflow.tracking_uri"),
        ("paths.cache_dir=/elsewhere", "paths.cache_dir"),
        ("paths.output_dir=/elsewhere", "paths.output_dir"),
        ("paths={cache_dir: /elsewhere}", "paths.cache_dir"),
        ("dataset.cache_dir=/elsewhere", "dataset.cache_dir"),
        ("trainer.default_root_dir=/elsewhere", "trainer.default_root_dir"),
        ("hydra.run.dir=/elsewhere", "hydra.run.dir"),
        ("hydra/launcher=slurm", "hydra.launcher"),
    ],
)
def test_a_replayed_override_may_not_move_where_the_run_writes(override: str, key: str):
    with pytest.raises(UnsafeConfigError, match=f"refusing to replay .*: {key} (says where|leaves the folder)") as e:
        check_places([override], {override: WHERE}, typed=["trainer.max_steps=20"])
    assert str(WHERE) in str(e.value) and f"type {key}=<value> on the command line" in str(e.value)
    if not key.startswith("hydra"):  # typed now, it is the user's own choice (and replaces the replayed value)
        check_places([override], {override: WHERE}, typed=[f"{key}=/mine"])


def test_what_an_honest_first_launch_records_replays():
    honest = ["dataset=image_folder", "dataset.root=/data/x", "paths.data_dir=/data", "paths.output_root=/runs"]
    honest += ["logger=[tensorboard,csv]", "logger.wandb.project=p", "schedule.name=cosine", "trainer.max_steps=9"]
    honest += ["callbacks.model_checkpoint.save_top_k=2", "callbacks.model_checkpoint.every_n_train_steps=3"]
    # names inside the run's own folders: what a first launch may choose, kept inside them
    honest += ["callbacks.model_checkpoint.filename=epoch_{epoch:03d}", "logger.tensorboard.name=tb"]
    honest += ["logger.csv.version=3", "logger.wandb.name=my run", "callbacks.best_fid.filename=best/fid"]
    check_places(honest, dict.fromkeys(honest, WHERE))


def test_a_logger_list_replays_when_each_logger_is_an_option(hydra_initialised):
    check_known(["logger=[tensorboard,csv]"], {"logger=[tensorboard,csv]": WHERE}, "train")
    with pytest.raises(UnsafeConfigError, match="logger has no option 'evil'"):
        check_known(["logger=[tensorboard,evil]"], {"logger=[tensorboard,evil]": WHERE}, "train")
