"""U-Net shapes for every model config, and clear errors for sizes it cannot take."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ddpm_lab.config import config_dir
from ddpm_lab.models.unet import UNet, sinusoidal_embedding

# The published architectures (*_original, up to 114M parameters): tests/unit/artifacts/test_diffusers_io.py.
MODELS = sorted(p.stem for p in (Path(config_dir()) / "model").glob("*.yaml") if not p.stem.endswith("_original"))


def model_config(name: str, channels: int, size: int):
    import ddpm_lab.config  # noqa: F401  (registers the resolvers model configs use)

    model = OmegaConf.load(Path(config_dir()) / "model" / f"{name}.yaml")
    return OmegaConf.create({"dataset": {"channels": channels, "image_size": size}, "model": model}).model


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_matches_input(name: str, channels: int):
    size = 28 if name == "unet_small" else 32
    net = instantiate(model_config(name, channels, size)).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        out = net(x, torch.tensor([0, 999]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_output_depends_on_t_and_x():
    torch.manual_seed(0)
    net = UNet(
        in_channels=1,
        image_size=16,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        groups=4,
    )
    for p in net.parameters():  # zero-initialised output layers would hide the dependence
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 1, 16, 16)
    a, b = net(x, torch.tensor([1, 1])), net(x, torch.tensor([500, 500]))
    assert not torch.allclose(a, b)
    assert not torch.allclose(a[0], a[1])


def test_image_size_not_divisible_is_a_clear_error():
    with pytest.raises(ValueError, match=r"image_size=30 .*divisible by 4"):
        UNet(in_channels=1, image_size=30, channel_mults=(1, 2, 2), attention_resolutions=())


def test_attention_resolution_that_never_occurs_is_an_error():
    with pytest.raises(ValueError, match=r"attention_resolutions \[16\]"):
        UNet(in_channels=1, image_size=28, channel_mults=(1, 2, 2), attention_resolutions=(16,))


def test_sinusoidal_embedding():
    emb = sinusoidal_embedding(torch.tensor([0, 10]), 8)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert torch.allclose(emb[1, 0], torch.sin(torch.tensor(10.0)))


def _tiny(**kwargs) -> UNet:
    return UNet(
        in_channels=1,
        image_size=8,
        base_channels=8,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(),
        groups=4,
        **kwargs,
    )


def test_an_unconditional_unet_is_unchanged_by_the_class_option():
    """num_classes=0: same modules, same state_dict keys, same weights from the same seed, no labels taken."""
    torch.manual_seed(0)
    plain = _tiny()
    torch.manual_seed(0)
    explicit = _tiny(num_classes=0)
    assert not hasattr(plain, "class_emb")
    assert list(plain.state_dict()) == list(explicit.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), explicit.state_dict().values()))
    with pytest.raises(ValueError, match="unconditional"):
        plain(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))


def test_class_conditional_unet_embeds_labels_and_a_null_class():
    torch.manual_seed(0)
    net = _tiny(num_classes=3).eval()
    assert net.class_emb.num_embeddings == 4  # 3 classes + the null class
    assert set(net.state_dict()) - set(_tiny().state_dict()) == {"class_emb.weight"}
    for p in net.parameters():  # the last convolutions start at zero: make the embedding's effect visible
        torch.nn.init.normal_(p, std=0.2)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([3, 3, 3])
    with torch.no_grad():
        by_class = net(x, t, torch.tensor([0, 1, 2]))
        null = net(x, t, torch.tensor([3, 3, 3]))
        torch.testing.assert_close(net(x, t), null)  # y=None is the null class
        torch.testing.assert_close(net(x, t, torch.tensor(1)), net(x, t, torch.tensor([1, 1, 1])))
    assert not torch.allclose(by_class, null)
    assert not torch.allclose(by_class[0], net(x, t, torch.tensor([1, 1, 1]))[0])
