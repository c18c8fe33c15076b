"""Configs read from disk: plain ``${key}`` references are followed in pure Python, resolvers never run."""

from __future__ import annotations

import pytest

from ddpm_lab.artifacts.allow_list import check_safe, resolve_references
from ddpm_lab.errors import UnsafeConfigError

STORED = {
    "seed": 7,
    "paths": {"data_dir": "data", "nested": "${paths.data_dir}"},
    "dataset": {"_target_": "ddpm_lab.data.ImageFolderDataModule", "root": "${paths.nested}/mnist", "seed": "${seed}"},
}


def test_plain_references_are_followed():
    dataset = resolve_references(STORED, STORED["dataset"], "dataset")
    assert dataset == {"_target_": "ddpm_lab.data.ImageFolderDataModule", "root": "data/mnist", "seed": 7}
    check_safe(dataset, "dataset")


@pytest.mark.parametrize(
    "value, message",
    [
        ("${oc.env:HOME}", "refusing the interpolation"),
        ("prefix ${oc.decode:'1'}", "refusing the interpolation"),
        ("${now:%Y}", "refusing the interpolation"),
        ("${missing.key}", "names no key"),
        ("data/${paths}", "is not a plain value"),
    ],
)
def test_resolvers_and_dangling_references_are_refused(value: str, message: str):
    stored = {**STORED, "dataset": {**STORED["dataset"], "root": value}}
    with pytest.raises(UnsafeConfigError, match=message):
        resolve_references(stored, stored["dataset"], "dataset")


def test_a_reference_loop_stops():
    stored = {"a": "${b}", "b": "${a}"}
    with pytest.raises(UnsafeConfigError, match="nested more than"):
        resolve_references(stored, stored["a"], "a")


def test_a_resolver_behind_a_reference_is_refused_too():
    stored = {**STORED, "paths": {"data_dir": "${oc.env:HOME}", "nested": "${paths.data_dir}"}}
    with pytest.raises(UnsafeConfigError, match="oc.env"):
        resolve_references(stored, stored["dataset"], "dataset")
