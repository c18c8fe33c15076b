"""Learning-rate schedules after the warm-up, the default warm-up that follows trainer.max_steps, accumulation."""

from __future__ import annotations

import math

import pytest

from ddpm_lab.config import build_components, build_module
from ddpm_lab.config.checks import check_trainer_values
from ddpm_lab.errors import ConfigError
from ddpm_lab.training import ConstantLR, CosineLR, LinearLR, auto_warmup


@pytest.mark.parametrize("warmup", [0, 1, 7, 1000])
def test_constant_is_todays_warmup_bit_for_bit(warmup: int) -> None:
    today = lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0  # the LambdaLR before lr_schedule
    schedule = ConstantLR(warmup)
    assert [schedule(s) for s in range(2500)] == [today(s) for s in range(2500)]


@pytest.mark.parametrize("kind", [CosineLR, LinearLR])
def test_decays_reach_the_floor_at_total_steps_and_stay(kind) -> None:
    schedule = kind(warmup_steps=10, total_steps=110, floor=0.1)
    assert schedule(0) == pytest.approx(0.1) and schedule(9) == 1.0  # warm-up as constant's
    assert schedule(10) == 1.0 and schedule(60) == pytest.approx(0.55)  # halfway: (1 + floor) / 2 for both
    assert schedule(110) == pytest.approx(0.1) and schedule(500) == pytest.approx(0.1)
    values = [schedule(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay
    if kind is CosineLR:  # slow at both ends: a quarter of the way is above the straight line
        assert schedule(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_decay_without_a_step_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"lr_schedule.total_steps=-1.*trainer.max_steps"):
        CosineLR(warmup_steps=0, total_steps=-1)
    with pytest.raises(ConfigError, match="lr_schedule.floor"):
        LinearLR(total_steps=10, floor=2)


def test_auto_warmup_scales_with_the_run_and_is_capped() -> None:
    assert [auto_warmup(n) for n in (0, 100, 500, 20_000, 100_000, 800_000, -1)] == [0, 5, 25, 1000, 1000, 1000, 1000]


def test_default_warmup_follows_max_steps_and_an_explicit_one_wins(cfg_train) -> None:
    assert cfg_train().warmup_steps == 1000  # today's value at the default 100k steps: default training unchanged
    assert cfg_train("trainer.max_steps=500").warmup_steps == 25  # a 500-step run reaches its lr
    assert cfg_train("trainer.max_steps=500", "warmup_steps=300").warmup_steps == 300
    assert cfg_train("experiment=ddpm_cifar10").warmup_steps == 5000  # a recipe's own value stays


@pytest.mark.parametrize("option", ["constant", "cosine", "linear"])
def test_lr_schedule_options_build_into_the_module(cfg_train, option: str) -> None:
    cfg = cfg_train(f"lr_schedule={option}", "model=unet_tiny", "trainer.max_steps=200")
    module = build_module(cfg, *build_components(cfg))
    factor = module.lr_factor
    assert type(factor).__name__ == option.capitalize() + "LR" and factor.warmup_steps == 10
    assert factor(200) == (1.0 if option == "constant" else pytest.approx(0.1))  # lr_schedule.floor at max_steps
    optimizer = module.configure_optimizers()
    scheduler = optimizer["lr_scheduler"]["scheduler"]
    # A lambda, not the object: nothing of the schedule goes into checkpoints (a resume may change max_steps).
    assert scheduler.state_dict()["lr_lambdas"] == [None]
    lrs = []
    for _ in range(200):
        lrs.append(optimizer["optimizer"].param_groups[0]["lr"])
        optimizer["optimizer"].step()
        scheduler.step()
    assert lrs[9] == pytest.approx(cfg.optimizer.lr) and lrs[-1] == pytest.approx(cfg.optimizer.lr * factor(199))


def test_cosine_without_max_steps_is_one_config_error(cfg_train) -> None:
    cfg = cfg_train("lr_schedule=cosine", "model=unet_tiny", "trainer.max_steps=-1")
    with pytest.raises(ConfigError, match=r"^lr_schedule.total_steps=-1: CosineLR decays"):
        build_module(cfg, *build_components(cfg))


def test_accumulation_is_checked_and_documented(cfg_train) -> None:
    assert cfg_train().trainer.accumulate_grad_batches == 1
    with pytest.raises(ConfigError, match="trainer.accumulate_grad_batches must be >= 1"):
        check_trainer_values(cfg_train("trainer.accumulate_grad_batches=0"))
