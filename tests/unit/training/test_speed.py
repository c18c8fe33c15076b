"""Per-step costs (issue 16): the throughput scalars, the EMA's foreach update, no device reads on quiet steps,
and default training unchanged bit for bit by all of them."""

from __future__ import annotations

import copy
import functools
import logging
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from ddpm_lab.diffusion import DDPMSampler, GaussianDiffusion, make_betas
from ddpm_lab.models import UNet
from ddpm_lab.training import EMA, DiffusionModule, Throughput
from ddpm_lab.training.module import fused_can_clip, match_state_layout

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def tiny_net() -> UNet:
    return UNet(
        in_channels=1,
        image_size=8,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        dropout=0.1,  # dropout draws random numbers: a changed RNG stream would show in the losses
        groups=4,
    )


def tiny_module(net: UNet | None = None) -> DiffusionModule:
    diffusion = GaussianDiffusion(make_betas("linear", timesteps=50, warn=False))
    optimizer = functools.partial(torch.optim.AdamW, lr=1e-3)
    return DiffusionModule(net or tiny_net(), diffusion, DDPMSampler(), optimizer=optimizer)


class Recorder(Logger, pl.Callback):
    """A logger keeping every logged metric, and a callback keeping every step's loss."""

    name, version = "recorder", 0

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.losses: list[torch.Tensor] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().clone())


def fit(callbacks: list[pl.Callback]) -> tuple[DiffusionModule, Recorder]:
    pl.seed_everything(0)
    module, recorder = tiny_module(), Recorder()
    data = TensorDataset(torch.rand(48, 1, 8, 8) * 2 - 1, torch.zeros(48, dtype=torch.long))
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=6,
        log_every_n_steps=2,
        gradient_clip_val=1.0,
        logger=recorder,
        callbacks=[*callbacks, recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=8))
    return module, recorder


def test_throughput_logs_on_logging_steps_only_and_training_is_unchanged(monkeypatch, caplog) -> None:
    syncs = []
    monkeypatch.setattr(Throughput, "_sync", staticmethod(lambda pl_module: syncs.append(1)))
    ema_new = EMA(decay=0.9)
    with caplog.at_level(logging.INFO, logger="ddpm_lab.training.throughput"):
        module_new, new = fit([ema_new, Throughput()])
    speed = [(step, m) for step, m in new.metrics if "speed/images_per_s" in m]
    assert [step for step, _ in speed] == [1, 3, 5]  # Lightning's logging steps (log_every_n_steps=2)
    for _, m in speed:
        assert m["speed/images_per_s"] > 0 and m["speed/step_time_s"] > 0 and 0 <= m["speed/data_wait_share"] < 1
        assert m["speed/images_per_s"] == pytest.approx(8 / m["speed/step_time_s"])
        assert "speed/mfu" not in m  # no known peak on a CPU
    assert len(syncs) == 3 + 1  # the logging steps and the end of training: no other step waits for the device
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("throughput:")]
    assert "images/s on average over" in line and "GFLOP per training image" in line

    # The same run the way it trained before issue 16: Lightning's own AveragedModel update, no Throughput.
    ema_old = EMA(decay=0.9)
    monkeypatch.setattr(
        EMA, "update", lambda self, pl_module: self._average_model.update_parameters(pl_module), raising=True
    )
    module_old, old = fit([ema_old])
    assert len(new.losses) == len(old.losses) == 6
    assert all(torch.equal(a, b) for a, b in zip(new.losses, old.losses))  # bit for bit
    for a, b in zip(ema_new.averaged_net(module_new).parameters(), ema_old.averaged_net(module_old).parameters()):
        assert torch.equal(a, b)
    for a, b in zip(module_new.net.parameters(), module_old.net.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("channels_last", [False, True])
def test_ema_foreach_update_equals_averaged_model(channels_last: bool) -> None:
    torch.manual_seed(0)
    net = tiny_net()
    ema = EMA(decay=0.99)
    ema._average_model = AveragedModel(net, use_buffers=False, multi_avg_fn=ema._average)
    reference = AveragedModel(copy.deepcopy(net), use_buffers=False)
    if channels_last:  # what DiffusionModule does on CUDA after the average was copied
        net.to(memory_format=torch.channels_last)
    for step in range(1, 6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        ema._step = step
        ema.update(net)
        reference.multi_avg_fn = get_ema_multi_avg_fn(ema.decay_at(step))
        reference.update_parameters(net)
        for a, b in zip(ema._average_model.parameters(), reference.parameters()):
            assert torch.equal(a, b)
    assert int(ema._average_model.n_averaged) == int(reference.n_averaged) == 5


def test_finite_check_reads_the_device_only_on_logging_steps() -> None:
    module = tiny_module()
    trainer = SimpleNamespace(
        log_every_n_steps=3,
        global_step=0,
        strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision),
        precision="32-true",
        optimizers=[],
        checkpoint_callback=None,
    )
    module._trainer = trainer
    # A meta tensor stands for a loss on an accelerator: any read on the host (bool, item) raises.
    loss = torch.tensor(1.0, device="meta")
    for step in (0, 1):  # steps 1 and 2 do not log: only device-side bookkeeping
        trainer.global_step = step
        module._check_finite(loss)
    assert module._nonfinite is not None and module._nonfinite.device.type == "meta"
    trainer.global_step = 2  # step 3 logs: the accumulated verdict is read there
    with pytest.raises((RuntimeError, NotImplementedError)):
        module._check_finite(loss)
    # On the CPU every step is checked (reading is free): a NaN stops training at once.
    trainer.global_step = 0
    with pytest.raises(FloatingPointError, match="train/loss is nan"):
        module._check_finite(torch.tensor(float("nan")))


def test_resumed_optimizer_state_takes_the_channels_last_layout() -> None:
    net = tiny_net()
    optimizer = torch.optim.AdamW(net.parameters())
    net(torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)).sum().backward()
    optimizer.step()
    saved = copy.deepcopy(optimizer.state_dict())  # contiguous moments, as a checkpoint holds them
    net.to(memory_format=torch.channels_last)
    optimizer.load_state_dict(saved)
    conv = net.conv_in.weight
    assert optimizer.state[conv]["exp_avg"].stride() != conv.stride()
    match_state_layout(optimizer)
    for param, state in optimizer.state.items():
        assert state["exp_avg"].stride() == param.stride() and state["exp_avg_sq"].stride() == param.stride()
    index = next(i for i, p in enumerate(net.parameters()) if p is conv)
    assert torch.equal(optimizer.state[conv]["exp_avg"], saved["state"][index]["exp_avg"])


@pytest.mark.parametrize(
    ("precision", "clip", "fused"),
    [
        ("32-true", 1.0, True),
        ("bf16-mixed", 0.0, True),
        ("bf16-mixed", None, True),
        ("bf16-mixed", 1.0, False),
        ("16-mixed", 1.0, False),
    ],
)
def test_fused_adamw_only_where_lightning_can_clip_its_gradients(
    precision: str, clip: float | None, fused: bool
) -> None:
    # Found on an H200: bf16-mixed + gradient_clip_val=1.0 + fused AdamW stopped at the first step in Lightning.
    assert fused_can_clip(precision, clip) is fused
