"""Importance sampling of t for L_vlb: the loss-history sampler of Nichol & Dhariwal (2021, §3.3). Plain PyTorch."""

from __future__ import annotations

import torch


class LossHistory:
    """Importance sampling of t for L_vlb (Nichol & Dhariwal, §3.3): p_t ∝ √E[L_t²] over the last ``size`` losses
    of each t, mixed with ``uniform`` of the uniform distribution; uniform until every t has ``size`` losses.

    The loss of a t drawn this way is weighted by 1/(T p_t), so its expectation is the uniform-t loss.
    """

    def __init__(self, num_timesteps: int, size: int = 10, uniform: float = 0.001) -> None:
        self.num_timesteps, self.size, self.uniform = num_timesteps, size, uniform
        self.history = torch.zeros(num_timesteps, size, dtype=torch.float64)
        self.counts = torch.zeros(num_timesteps, dtype=torch.long)

    def probabilities(self) -> torch.Tensor:
        """p_t for t = 0 … T−1 (float64, on the CPU)."""
        if bool((self.counts < self.size).any()):
            return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)
        p = self.history.pow(2).mean(1).sqrt()
        p = p / p.sum()
        return p * (1.0 - self.uniform) + self.uniform / self.num_timesteps

    def sample(self, batch: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, weights 1/(T p_t)) for a batch, t drawn with torch's global generator."""
        p = self.probabilities()
        t = torch.multinomial(p, batch, replacement=True)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Push each sample's loss onto its t's history (oldest dropped once ``size`` are kept)."""
        for step, loss in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            if self.counts[step] == self.size:
                self.history[step] = torch.roll(self.history[step], -1)
                self.history[step, -1] = loss
            else:
                self.history[step, self.counts[step]] = loss
                self.counts[step] += 1
