"""Check helpers for config values: each raises ConfigError with one line that names the key, the bad
value and what is allowed. A leaf module: the regimen, every model and every task check their own keys
with these; `regbench.validation.validate` runs all the checks of a composed config."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from regbench.errors import ConfigError

_MISSING = object()


def get(cfg: DictConfig, key: str) -> Any:
    """The value at a dotted key; a missing key is a ConfigError that says so."""
    value = OmegaConf.select(cfg, key, throw_on_missing=False, default=_MISSING)
    if value is _MISSING:
        raise ConfigError(f"missing config key '{key}': add it to your config or command line")
    return value


def plain(value: Any) -> Any:
    """An OmegaConf list or dict as plain Python; anything else as it is."""
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def choice(cfg: DictConfig, key: str, allowed: Sequence[str]) -> None:
    value = get(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed: choose one of {', '.join(allowed)}")


def number(cfg: DictConfig, key: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, integer: bool = False, allow_none: bool = False) -> None:
    value = get(cfg, key)
    if value is None and allow_none:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{key}={value!r} is invalid: it must be {kind}" + (" or null" if allow_none else ""))
    if value != value:  # NaN
        raise ConfigError(f"{key}=nan is invalid: it must be {kind}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low}"
        hi = "" if high is None else f"{high}" + (")" if high_open else "]")
        if low is not None and high is not None:
            allowed = f"in {lo}, {hi}"
        elif low is not None:
            allowed = f"{'>' if low_open else '>='} {low}"
        else:
            allowed = f"{'<' if high_open else '<='} {high}"
        raise ConfigError(f"{key}={value!r} is invalid: it must be {allowed}")


def boolean(cfg: DictConfig, key: str) -> None:
    value = get(cfg, key)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} is invalid: it must be true or false")
