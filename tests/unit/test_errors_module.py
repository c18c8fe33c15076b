"""The shared value checks and the one-line reporting every entry point uses."""

from __future__ import annotations

import pytest

from ddpm_lab.errors import (
    CheckpointError,
    ConfigError,
    DatasetError,
    OutputExistsError,
    ResumeError,
    UnsafeConfigError,
    UserError,
    WeightsMismatchError,
    WeightsMissingError,
    check_choice,
    check_flag,
    check_list,
    check_number,
    first_line,
    user_errors,
)


@pytest.mark.parametrize(
    "value, kind, bounds, expected",
    [
        (8.0, int, {"low": 1}, 8),
        (3, float, {"low": 0}, 3.0),
        (None, int, {"optional": True}, None),
        (0.5, float, {"high": 1}, 0.5),
    ],
)
def test_check_number_accepts(value, kind, bounds, expected):
    assert check_number(value, "k", kind, **bounds) == expected


@pytest.mark.parametrize(
    "value, kind, bounds, message",
    [
        (8.5, int, {}, "k must be an integer, got 8.5"),
        ("abc", int, {}, "k must be an integer, got 'abc'"),
        (True, float, {}, "k must be a number, got True"),
        (None, int, {}, "k must be an integer, got None"),
        (0, int, {"low": 1}, "k must be >= 1, got 0"),
        (0.0, float, {"low": 0, "low_open": True}, "k must be > 0, got 0.0"),
        (2, float, {"low": 0, "high": 1}, "k must be in [0, 1], got 2.0"),
    ],
)
def test_check_number_refuses_naming_the_key(value, kind, bounds, message):
    with pytest.raises(ConfigError) as err:
        check_number(value, "k", kind, **bounds)
    assert str(err.value).startswith(message)


def test_check_choice():
    assert check_choice("a", "k", ("a", "b")) == "a"
    with pytest.raises(ConfigError, match=r"k must be one of \('a', 'b'\), got 'c'"):
        check_choice("c", "k", ("a", "b"))


def test_every_user_error_has_one_base():
    for cls in (
        ConfigError,
        CheckpointError,
        DatasetError,
        OutputExistsError,
        ResumeError,
        UnsafeConfigError,
        WeightsMissingError,
        WeightsMismatchError,
    ):
        assert issubclass(cls, UserError)


def test_user_errors_print_one_line_and_exit_2(capsys):
    cleaned = []
    with pytest.raises(SystemExit) as exit_info, user_errors(cleanup=lambda: cleaned.append(True)):
        raise DatasetError("first line\n  second line")
    assert exit_info.value.code == 2 and cleaned == [True]
    assert capsys.readouterr().err == "error: first line second line\n"
    with pytest.raises(KeyError), user_errors():  # a bug keeps its traceback
        raise KeyError("x")


def test_first_line():
    assert first_line(ValueError("\n  a\nb")) == "a" and first_line(ValueError()) == "ValueError"


def test_check_flag_takes_only_booleans() -> None:
    assert check_flag(True, "dataset.flip") is True and check_flag(False, "compile") is False
    for value in ("maybe", "true", 1, None):
        with pytest.raises(ConfigError, match=r"^dataset\.flip must be true or false, got .*: set dataset\.flip=true"):
            check_flag(value, "dataset.flip")


def test_check_list_numbers_and_scalars() -> None:
    assert check_list([999, 500.0, 0], "timesteps", int, low=0) == [999, 500, 0]
    assert isinstance(check_list((0.5,), "x", float)[0], float)
    with pytest.raises(ConfigError, match=r"^timesteps must be a list, got 5: set timesteps=\[0,1\]"):
        check_list(5, "timesteps")
    with pytest.raises(ConfigError, match=r"^timesteps must be a list, got 'abc'"):
        check_list("abc", "timesteps")
    with pytest.raises(ConfigError, match=r"^timesteps is an empty list"):
        check_list([], "timesteps")
    with pytest.raises(ConfigError, match=r"^timesteps must be a list of integers >= 0, got \[3, -1\]"):
        check_list([3, -1], "timesteps", low=0)
    with pytest.raises(ConfigError, match=r"^timesteps must be a list of integers, got \[2\.5\]"):
        check_list([2.5], "timesteps")
