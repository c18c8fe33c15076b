"""Post-hoc EMA math (models/power_ema.py) on synthetic weight trajectories: the discrete power EMA is the closed-form
profile integrated over each step, a tracked length is recovered exactly from its snapshots, a length in between is
within the bound the least-squares residual gives, and the averages continue exactly after a save and load."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_lab.errors import ConfigError
from ddpm_lab.models.power_ema import (
    SIGMA_REL_MAX,
    PowerEMA,
    check_sigma_rels,
    gamma_to_sigma_rel,
    posthoc_coefficients,
    profile_dot,
    sigma_rel_to_gamma,
)

STEPS, EVERY, TRACKED = 400, 20, (0.05, 0.10)


def trajectory(step: int) -> list[torch.Tensor]:
    """Weights as a function of the step: a drift, an oscillation and a decaying transient (float32, as in training)."""
    t = torch.tensor(float(step), dtype=torch.float64)
    values = torch.stack([t / STEPS, torch.sin(t / 37.0), torch.exp(-t / 50.0) + 0.3 * torch.cos(t / 11.0)])
    return [values.float(), (2 * values[:2]).float()]


def run(sigma_rels, steps: int = STEPS, every: int | None = EVERY):
    """Track ``sigma_rels`` over ``steps`` steps; the snapshots every ``every`` steps as (step, σ_rel, tensors)."""
    ema = PowerEMA(sigma_rels, {"a": trajectory(0)[0], "b": trajectory(0)[1]})
    snapshots = []
    for step in range(1, steps + 1):
        ema.update(trajectory(step), step)
        if every and step % every == 0:
            snapshots += [(step, s, [t.clone() for t in avg]) for s, avg in zip(sigma_rels, ema.averages)]
    return ema, snapshots


def combine(snapshots, sigma_rel: float, step: int = STEPS):
    fit = posthoc_coefficients([s for s, _, _ in snapshots], [sigma_rel_to_gamma(r) for _, r, _ in snapshots], step,
                               sigma_rel_to_gamma(sigma_rel))  # fmt: skip
    out = [torch.zeros(t.shape, dtype=torch.float64) for t in snapshots[0][2]]
    for x, (_, _, tensors) in zip(fit.coefficients.tolist(), snapshots):
        for total, tensor in zip(out, tensors):
            total.add_(tensor.double(), alpha=x)
    return out, fit


def test_sigma_rel_and_gamma_are_inverse_and_match_edm2():
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)  # EDM2, section 3.1: σ_rel 0.10 ↔ γ 6.94
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    for sigma_rel in (0.001, 0.05, 0.15, 0.28):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(sigma_rel)) == pytest.approx(sigma_rel, rel=1e-12)
    assert gamma_to_sigma_rel(0.0) == pytest.approx(SIGMA_REL_MAX)


def test_the_discrete_update_weighs_each_step_by_the_profile_integrated_over_it():
    """θ_τ = e_τ (one-hot): the average after T steps is the weight vector, (τ^(γ+1) − (τ−1)^(γ+1)) / T^(γ+1)."""
    T, sigma_rel = 50, 0.1
    gamma = sigma_rel_to_gamma(sigma_rel)
    ema = PowerEMA([sigma_rel], {"w": torch.zeros(T, dtype=torch.float64)})
    for step in range(1, T + 1):
        ema.update([torch.nn.functional.one_hot(torch.tensor(step - 1), T).double()], step)
    tau = torch.arange(1, T + 1, dtype=torch.float64)
    expected = (tau ** (gamma + 1) - (tau - 1) ** (gamma + 1)) / T ** (gamma + 1)
    torch.testing.assert_close(ema.averages[0][0], expected, rtol=1e-12, atol=1e-15)
    # and the closed-form inner product is the integral of the two profiles' product, which is 0 after the shorter
    # one ends (midpoint rule on [0, 200])
    s = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000 * 200
    numeric = ((3 + 1) * s**3 / 200.0**4 * (7 + 1) * s**7 / 300.0**8).sum() * (200 / 100_000)
    assert float(profile_dot(200.0, 3.0, 300.0, 7.0)) == pytest.approx(float(numeric), rel=1e-8)
    assert float(profile_dot(300.0, 7.0, 200.0, 3.0)) == float(profile_dot(200.0, 3.0, 300.0, 7.0))


def test_a_tracked_length_is_recovered_from_its_snapshots_to_float_precision():
    ema, snapshots = run(TRACKED)
    for sigma_rel, average in zip(TRACKED, ema.averages):
        out, fit = combine(snapshots, sigma_rel)
        assert fit.relative_error < 2e-4  # the float64 floor of the residual computed from the Gram matrix
        for got, want in zip(out, average):
            torch.testing.assert_close(got.float(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("sigma_rel", [0.075, 0.15])
def test_a_length_in_between_is_within_the_residual_bound_of_the_direct_ema(sigma_rel):
    """|reconstructed − direct| = |∫ θ(s) (q − p_r)(s) ds| ≤ ‖q − p_r‖₂ ‖θ‖₂ (Cauchy–Schwarz), with θ the trajectory
    held constant over each step, ‖q − p_r‖₂ = relative_error · ‖p_r‖₂, plus float32 rounding of the averages."""
    _, snapshots = run(TRACKED)
    direct, _ = run([sigma_rel], every=None)
    out, fit = combine(snapshots, sigma_rel)
    norm_p = math.sqrt(float(profile_dot(STEPS, sigma_rel_to_gamma(sigma_rel), STEPS, sigma_rel_to_gamma(sigma_rel))))
    tracked, _ = run(TRACKED, every=None)
    for i, (got, want) in enumerate(zip(out, direct.averages[0])):
        theta = torch.stack([trajectory(step)[i].double() for step in range(1, STEPS + 1)])
        bound = (fit.relative_error + 2e-4) * norm_p * theta.pow(2).sum(0).sqrt() + 1e-5
        error = (got - want.double()).abs()
        assert (error <= bound).all(), (error, bound)
        # and it bites: far closer to the direct EMA of that length than either tracked one is
        nearest = torch.stack([(a[i].double() - want.double()).abs() for a in tracked.averages]).min(0).values
        assert (error < 0.1 * nearest).all(), (error, nearest)


def test_averages_continue_exactly_after_a_save_and_load():
    straight, _ = run(TRACKED, steps=30, every=None)
    first, _ = run(TRACKED, steps=12, every=None)
    saved = [{k: v.clone() for k, v in p.items()} for p in first.profiles()]
    resumed = PowerEMA(TRACKED, {"a": torch.zeros(3), "b": torch.zeros(2)})
    resumed.load(saved, step=12)
    for step in range(13, 31):
        resumed.update(trajectory(step), step)
    for a, b in zip(straight.averages, resumed.averages):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="shape"):
        resumed.load([{"a": torch.zeros(4), "b": torch.zeros(2)}] * 2, step=1)
    with pytest.raises(ValueError, match="not after"):
        resumed.update(trajectory(30), 30)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([0.3], "sigma_rels=0.3 is out of range"),
        ([0.0], "sigma_rels=0 is out of range"),
        ([-0.1], "out of range"),
        ([], "is an empty list"),
        ([0.1, 0.1], "lists 0.1 more than once"),
        (["abc"], "must be a number"),
        ("0.1", "must be a list of numbers"),
    ],
)
def test_bad_ema_lengths_are_refused_in_one_line(values, message):
    with pytest.raises(ConfigError, match=message):
        check_sigma_rels(values, "sigma_rels")
