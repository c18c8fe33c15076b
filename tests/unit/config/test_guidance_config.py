"""What ``sample`` and ``evaluate`` ask of a class-conditional checkpoint: guidance scales (one, a list, or Hydra's
``guidance=0,1,2`` read as a list) and classes, refused in one line when the checkpoint cannot do them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from ddpm_lab.artifacts.trained_model import LoadedModel
from ddpm_lab.config.guidance import class_labels, guidance_as_list, guidance_scales, parse_guidance
from ddpm_lab.errors import ConfigError


def model(num_classes: int, names: list[str] | None = None, null_class: bool = True) -> LoadedModel:
    """A LoadedModel whose network only says how many classes it has (all ``class_labels`` asks of it)."""
    config = {"dataset": {"class_names": names}} if names else {}
    net = SimpleNamespace(num_classes=num_classes, null_class=null_class)
    return LoadedModel(net, None, None, config, 0, Path("m.ckpt"))


def test_guidance_is_none_one_scale_or_a_list():
    assert parse_guidance(None) is None
    assert parse_guidance(2) == [2.0] and parse_guidance([0, 1.5]) == [0.0, 1.5]
    assert parse_guidance(OmegaConf.create({"g": [0, 4]}).g) == [0.0, 4.0]
    with pytest.raises(ConfigError, match=r"^guidance must be a number >= 0 or a list of them, got '1,-2': set"):
        parse_guidance(OmegaConf.create({"g": [1, -2]}).g)
    with pytest.raises(ConfigError, match="got 'abc'"):
        parse_guidance("abc")


def test_hydras_sweep_syntax_is_one_run_over_a_list_unless_multirun():
    argv = ["ckpt=a.ckpt", "guidance=0,1,2", "n=8"]
    assert guidance_as_list(argv) == ["ckpt=a.ckpt", "guidance=[0,1,2]", "n=8"]
    assert guidance_as_list(["guidance=[0,1]", "guidance=2"]) == ["guidance=[0,1]", "guidance=2"]
    assert guidance_as_list(["-m", *argv]) == ["-m", *argv]


def test_guidance_scales_follow_the_checkpoint():
    assert guidance_scales(None, 0, "m.ckpt") is None
    assert guidance_scales(None, 3, "m.ckpt") == [1.0] and guidance_scales((0.0, 2.0), 3, "m.ckpt") == [0.0, 2.0]
    with pytest.raises(ConfigError, match=r"^guidance=0,1.5 needs a class-conditional checkpoint, but m.ckpt is"):
        guidance_scales([0.0, 1.5], 0, "m.ckpt")


def test_sample_classes_by_index_or_name_per_class_or_spread_over_n():
    pets = model(3, ["cat", "dog", "owl"])
    classes, labels = class_labels(("owl", 0), None, None, 5, pets)
    assert classes == [2, 0] and labels.tolist() == [2, 0, 2, 0, 2]
    classes, labels = class_labels(None, 2, 3.0, 64, pets)  # per_class replaces n
    assert classes == [0, 1, 2] and labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert class_labels("dog", None, None, 2, pets)[1].tolist() == [1, 1]
    assert class_labels(None, None, None, 4, pets) == (None, None)  # no classes: unconditional samples
    assert pets.class_titles == ["cat", "dog", "owl"] and model(2).class_titles == ["0", "1"]
    assert model(0).class_titles == []


@pytest.mark.parametrize(
    ("asked", "per_class", "guidance", "message"),
    [
        ((), None, None, "class is an empty list"),
        (None, None, 3, "guidance=3 needs classes to guide towards"),
        (None, None, 1, "guidance=1 needs classes to guide towards"),  # would be ignored: samples unconditional
        ("bird", None, None, "class=bird is not one of the model's 3 classes"),
    ],
)
def test_what_a_conditional_checkpoint_cannot_do_is_refused(asked, per_class, guidance, message):
    with pytest.raises(ConfigError, match=message):
        class_labels(asked, per_class, guidance, 4, model(3, ["cat", "dog", "owl"]))


@pytest.mark.parametrize(
    ("asked", "guidance", "rescale", "message"),
    [
        ("cat", None, 0.7, r"^guidance_rescale=0.7 rescales guided outputs, but guidance is 1 \(none\)"),
        ("cat", 1.0, 0.7, "guidance_rescale=0.7 rescales guided outputs"),
        (None, None, 0.7, "guidance_rescale=0.7 needs classes to guide towards"),
    ],
)
def test_guidance_rescale_without_guidance_is_refused(asked, guidance, rescale, message):
    pets = model(3, ["cat", "dog", "owl"])
    with pytest.raises(ConfigError, match=message):
        class_labels(asked, None, guidance, 4, pets, rescale)
    assert class_labels("cat", None, 5.0, 2, pets, 0.7)[1].tolist() == [0, 0]
    with pytest.raises(ConfigError, match=r"^guidance_rescale=0.7 rescales guided outputs, but guidance is 1"):
        guidance_scales(None, 3, "m.ckpt", 0.7)
    with pytest.raises(ConfigError, match=r"^guidance_rescale=0.7 needs a class-conditional checkpoint"):
        guidance_scales(None, 0, "m.ckpt", 0.7)
    assert guidance_scales([1.0, 4.0], 3, "m.ckpt", 0.7) == [1.0, 4.0]


def test_a_checkpoint_without_a_null_class_takes_classes_at_guidance_one_only():
    ten = model(10, [str(k) for k in range(10)], null_class=False)
    assert class_labels(3, None, None, 2, ten)[1].tolist() == [3, 3]
    assert class_labels(3, None, 1.0, 2, ten)[1].tolist() == [3, 3]
    for asked, guidance, message in (
        (3, 2.0, "guidance=2.0 for m.ckpt: this model has no null"),
        (None, None, "^unconditional samples of m.ckpt: this model has no null"),
    ):
        with pytest.raises(ConfigError, match=message):
            class_labels(asked, None, guidance, 2, ten)
    assert guidance_scales(None, 10, "m.ckpt", 0.0, null_class=False) == [1.0]
    with pytest.raises(ConfigError, match="^guidance=0,1 for m.ckpt: this model has no null"):
        guidance_scales([0.0, 1.0], 10, "m.ckpt", 0.0, null_class=False)


@pytest.mark.parametrize(
    ("asked", "per_class", "guidance", "shown"),
    [(7, None, None, "class=7"), (("a", "b"), None, None, "class=['a', 'b']"), (None, 2, None, "per_class=2")],
)
def test_an_unconditional_checkpoint_refuses_classes_as_they_were_typed(asked, per_class, guidance, shown):
    with pytest.raises(ConfigError) as refused:
        class_labels(asked, per_class, guidance, 4, model(0))
    assert str(refused.value).startswith(f"{shown} needs a class-conditional checkpoint, but m.ckpt is unconditional")
    assert class_labels(None, None, None, 4, model(0)) == (None, None)
