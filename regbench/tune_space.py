"""What `regbench tune` searches: conf/tune/default.yaml read and checked, each regimen's ranges (the common
space, and with tune.conditional the keys the regimen reads only where it uses their regularizer), and each
regimen's plan (its command line and composed config). Every bad value here is one line, exit code 2."""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from regbench.errors import ConfigError

# The keys a regimen reads only when it uses the regularizer they tune, with the range searched.
CONDITIONAL = {
    "regularizer.dropout.p": ({"low": 0.05, "high": 0.7, "log": False}, lambda r: r.dropout_p > 0),
    "regularizer.grad_clip.max": ({"low": 0.1, "high": 10.0, "log": True}, lambda r: r.clip_mode != "none"),
    "regularizer.label_smoothing": ({"low": 0.01, "high": 0.3, "log": False}, lambda r: r.label_smoothing > 0),
    "regularizer.mixup.alpha": ({"low": 0.05, "high": 1.0, "log": True}, lambda r: r.mixup_alpha > 0),
    "regularizer.cutmix.alpha": ({"low": 0.1, "high": 2.0, "log": True}, lambda r: r.cutmix_alpha > 0),
    "regularizer.ema.decay": ({"low": 0.9, "high": 0.9999, "log": False}, lambda r: r.ema_decay > 0),
}
LR_DECADES = 1.5  # optimizer.lr's default range: this many decades either side of the task's default
PRUNERS = ("none", "median", "asha")
LAUNCHERS = ("local", "slurm")
EDGE = 0.05  # a best value within 5% of its range (on its scale) of an end: the range should move


@dataclass(frozen=True)
class Range:
    """One searched key: a float range (log or linear), an integer range (`integer`), or a list of choices
    (`choices`: model.init's initialisations, say)."""

    key: str
    low: float
    high: float
    log: bool
    integer: bool = False
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def stored(self) -> list:
        if self.choices is not None:  # no NaN bounds: the stored identity must compare equal to itself
            return [self.key, None, None, False, False, list(self.choices)]
        return [self.key, self.low, self.high, self.log, self.integer, []]

    def edge(self, value: float) -> str | None:
        """"low" or "high" when `value` sits at that end of the range (on its scale); None for choices."""
        if self.choices is not None:
            return None
        scale = math.log10 if self.log else (lambda v: v)
        span = scale(self.high) - scale(self.low)
        where = (scale(value) - scale(self.low)) / span if span > 0 else 0.5
        return "low" if where <= EDGE else "high" if where >= 1 - EDGE else None


def tune_config(overrides: list[str]) -> DictConfig:
    """conf/tune/default.yaml with the command line's tune.KEY=VALUE applied, checked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    base = OmegaConf.load(str(files("regbench.conf").joinpath("tune", "default.yaml")))
    for override in overrides:
        key = override.partition("=")[0].lstrip("+~")
        name = key.removeprefix("tune.")
        if name.split(".")[0] not in base:
            raise ConfigError(f"{override}: there is no key {key!r} in tune's configuration; its keys are "
                              f"{', '.join('tune.' + k for k in base)}")
        try:  # values as Hydra reads them on the command line: [none,bn], 1e-3, null
            value = OverridesParser.create().parse_override(override).value()
        except HydraException as err:
            raise ConfigError(f"{override}: cannot be read ({str(err).splitlines()[0]})") from None
        if name.startswith("space."):  # the space's keys hold dots themselves: tune.space.optimizer.lr.low=...
            searched, _, field = name[len("space."):].rpartition(".")
            if field in ("low", "high", "log", "int", "choices") and searched:
                default = CONDITIONAL.get(searched, ({"low": None, "high": None, "log": False},))[0]
                entry = dict(base.space.get(searched) or default)  # a regimen's own key starts from its range
                entry[field] = value
                base.space[searched] = entry
            else:
                base.space[name[len("space."):]] = value
            continue
        OmegaConf.update(base, name, value, merge=False)
    tune = base  # the defaults, now with the command line's values
    if not OmegaConf.is_list(tune.regimens):
        raise ConfigError(f"tune.regimens={tune.regimens}: give a list, e.g. tune.regimens=[none,bn]")
    if not tune.regimens:
        raise ConfigError("tune.regimens=[]: name at least one regimen, e.g. tune.regimens=[none,bn]")
    for key, low in (("trials", 1), ("workers", 1)):
        value = tune.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"tune.{key}={value}: give an integer >= {low}")
    if tune.launcher not in LAUNCHERS:
        raise ConfigError(f"tune.launcher={tune.launcher}: choose one of {', '.join(LAUNCHERS)}")
    if tune.pruner not in PRUNERS:
        raise ConfigError(f"tune.pruner={tune.pruner}: choose one of {', '.join(PRUNERS)}")
    if not OmegaConf.is_list(tune.final_seeds) or not tune.final_seeds:
        raise ConfigError(f"tune.final_seeds={tune.final_seeds}: give a list of seeds, e.g. tune.final_seeds=[0,1,2]")
    if tune.trial_seed in list(tune.final_seeds):
        raise ConfigError(f"tune.final_seeds={list(tune.final_seeds)} holds tune.trial_seed={tune.trial_seed}: the "
                          "final runs must use seeds no trial used; change one of them")
    if not OmegaConf.is_dict(tune.space):
        raise ConfigError(f"tune.space={tune.space}: give KEY: {{low: ..., high: ..., log: true|false}} entries")
    if tune.fixed is not None:
        if not OmegaConf.is_list(tune.fixed) or not tune.fixed:
            raise ConfigError(f"tune.fixed={tune.fixed}: give a list of folders or results.csv files of the fixed "
                              "protocol's runs, e.g. tune.fixed=[outputs/sweeps/2026-12-06_10-00-00]")
        missing = [str(f) for f in tune.fixed if not Path(str(f)).expanduser().exists()]
        if missing:
            raise ConfigError(f"tune.fixed: {missing[0]} does not exist (give the fixed protocol's sweep or run "
                              "folders, or results.csv files)")
    return tune


def ranges(tune: DictConfig, cfg: DictConfig, regimen) -> list[Range]:
    """The searched keys of one regimen (its config `cfg`), each checked: the common space (every key must
    be one the regimen reads) and, with tune.conditional, the regimen's own keys."""
    out = []
    if not tune.space and not tune.conditional:
        raise ConfigError("tune.space is empty and tune.conditional=false: there is nothing to tune")
    for key, spec in tune.space.items():
        spec = spec if OmegaConf.is_dict(spec) else OmegaConf.create({})
        if key in CONDITIONAL and not CONDITIONAL[key][1](regimen):
            continue  # a regimen's own key: searched only where the regimen reads it
        if OmegaConf.select(cfg, key) is None and key != "optimizer.lr":
            raise ConfigError(f"tune.space.{key}: there is no key {key!r} in this configuration")
        low, high = spec.get("low"), spec.get("high")
        if key == "optimizer.lr" and low is None and high is None:
            default = float(cfg.optimizer.lr)
            low, high = default / 10 ** LR_DECADES, default * 10 ** LR_DECADES
        out.append(_checked(key, low, high, bool(spec.get("log", False)), bool(spec.get("int", False)),
                            spec.get("choices")))
    if tune.conditional:
        for key, (spec, reads) in CONDITIONAL.items():
            if reads(regimen) and key not in tune.space:
                out.append(_checked(key, spec["low"], spec["high"], spec["log"]))
    if not out:
        raise ConfigError(f"regularizer={cfg.regularizer.name}: tune.space is empty and the regimen has no keys of its "
                          "own to search: add optimizer.lr to tune.space")
    return out


def _checked(key: str, low: Any, high: Any, log_scale: bool, integer: bool = False,
             choices: Any = None) -> Range:
    if choices is not None:
        options = list(choices) if OmegaConf.is_list(choices) or isinstance(choices, (list, tuple)) else []
        if len(options) < 2:
            raise ConfigError(f"tune.space.{key}.choices={choices}: give a list of at least two values")
        return Range(key, math.nan, math.nan, False, choices=tuple(options))
    for name, value in (("low", low), ("high", high)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"tune.space.{key}.{name}={value}: give a number")
    if low >= high:
        raise ConfigError(f"tune.space.{key}: low={low} is not below high={high}")
    if log_scale and low <= 0:
        raise ConfigError(f"tune.space.{key}: a log range must stay above 0 (low={low}); use log: false or a low > 0")
    return Range(key, float(low), float(high), log_scale, integer=integer)


@dataclass
class Plan:
    """One regimen's search: its base command line (the run's overrides, the regimen, the trial seed),
    its composed config and the ranges searched."""

    regimen: str
    overrides: list[str]
    cfg: DictConfig
    ranges: list[Range]


def plans(run_overrides: list[str], tune: DictConfig, machine: bool = True) -> list[Plan]:
    """Each regimen's plan, its config composed and validated (`machine`: the device and the data too)."""
    from regbench.preflight import compose_config, merge_overrides
    from regbench.validation import validate

    out = []
    for name in tune.regimens:
        overrides = merge_overrides(run_overrides, [f"regularizer={name}", f"seed={tune.trial_seed}"])
        try:
            cfg = compose_config(overrides)
        except Exception as err:  # noqa: BLE001 - Hydra's composition errors, worded as the run command words them
            raise _composition_error(overrides, str(name), err, machine) from None
        regimen = validate(cfg, machine=machine)
        out.append(Plan(str(name), overrides, cfg, ranges(tune, cfg, regimen)))
    searched = {r.key for plan in out for r in plan.ranges}
    for key in tune.space:
        if key not in searched:
            raise ConfigError(f"tune.space.{key}: none of tune.regimens ({', '.join(map(str, tune.regimens))}) reads "
                              f"{key}, so searching it would only add noise; leave it out of tune.space")
    return out


def _composition_error(overrides: list[str], regimen: str, err: Exception, machine: bool) -> ConfigError:
    """The one line the run command would give for what does not compose (naming the override at fault:
    task=nonexistent, a regimen of tune.regimens that does not exist), else Hydra's own first line."""
    from regbench.preflight import check_command_line

    try:
        check_command_line(overrides, machine=machine)
    except ConfigError as explained:
        text = str(explained)
        return ConfigError(f"tune.regimens: {text}" if text.startswith(f"regularizer={regimen}:") else text)
    return ConfigError(f"tune.regimens: regularizer={regimen} cannot be composed ({str(err).splitlines()[0]})")
