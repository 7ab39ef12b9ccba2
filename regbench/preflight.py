"""Check a whole command line before Hydra starts anything, so a typo in the 40th job of a grid is a
one-line error now, not a traceback hours later.

Every sweep value is composed (each override at its first value, then each other value of each sweep
in turn: linear, not the full grid) and validated; Hydra's own composition errors are turned into one
line that names the key, the bad value and what is allowed."""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from importlib.resources import files

from omegaconf import DictConfig

from regbench.errors import ConfigError

# Hydra's own flags (--cfg, --help, -cn, ...) are Hydra's business: a command line with them is not checked.
MULTIRUN_FLAGS = ("-m", "--multirun")


def compose_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The config the `regbench` command builds for these overrides (with Hydra's own settings under
    `hydra` when with_hydra is true)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="regbench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=with_hydra)


def _keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        out.append(name)
        if isinstance(value, DictConfig):
            out.extend(_keys(value, f"{name}."))
    return out


def _explain(err: Exception, override: str | None, others: list[str]) -> ConfigError:
    """One line for Hydra's composition errors."""
    from hydra.errors import MissingConfigException

    if isinstance(err, MissingConfigException) and err.options is not None:
        group = (err.missing_cfg_file or "").split("/")[0] or (override or "").partition("=")[0]
        shown = override or group
        return ConfigError(f"{shown}: no such option; choose one of {', '.join(err.options)}")
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if override and text.startswith("Could not override"):
        key = override.partition("=")[0].lstrip("+~")
        try:
            known = _keys(compose_config(others))
        except Exception:  # noqa: BLE001 - the suggestion is a courtesy
            known = []
        return unknown_key(override, key, known)
    return ConfigError(f"{override + ': ' if override else ''}{text}")


def unknown_key(override: str, key: str, known: list[str]) -> ConfigError:
    """One line for a key that no part of the run reads: it is refused, never silently ignored, and a
    suggestion only ever names a key that exists in this configuration."""
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"{override}: there is no key {key!r} in this configuration{hint}; regbench refuses keys "
                       "that nothing would read rather than ignore them")


def config_groups() -> set[str]:
    """The config groups (folders of regbench's conf/, e.g. regularizer, hydra/launcher)."""
    root = files("regbench.conf")
    found: set[str] = set()

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.name.startswith("_"):
                found.add(prefix + entry.name)
                walk(entry, f"{prefix}{entry.name}/")
    walk(root, "")
    return found


# Where a user's own code reads the keys: with model=custom every model.* key goes to the factory, with
# task=custom every data.* key is the task's. They may be new, and need no +.
OPEN_KEYS = {"model=custom": "model.", "task=custom": "data."}


def open_prefixes(args: Sequence[str]) -> tuple[str, ...]:
    return tuple(prefix for choice, prefix in OPEN_KEYS.items() if choice in args)


def allow_new_keys(args: list[str]) -> list[str]:
    """With model=custom (task=custom), `model.width=32` (`data.n=100`) needs no +: it becomes ++model.width=32,
    which Hydra takes for a new key (or the same key given twice, the last value winning)."""
    prefixes = open_prefixes(args)
    fixed = ("model.name=", "model._target_=", "task.")
    return [f"++{a}" if prefixes and a.startswith(prefixes) and not a.startswith(fixed) and "=" in a else a
            for a in args]


def _added_keys(overrides: list[str], parsed) -> list[tuple[str, str]]:
    """(override, key) for each +key=value / ++key=value that sets a config key (not a group) that a user's
    own model or task would not read."""
    groups = config_groups()
    prefixes = open_prefixes(overrides)
    out = []
    for text, override in zip(overrides, parsed):
        key = override.key_or_group
        if override.type.name in ("ADD", "FORCE_ADD") and key.split("@")[0] not in groups \
                and not key.startswith("hydra") and not (prefixes and key.startswith(prefixes)):
            out.append((text, key))
    return out


def check_command_line(argv: Sequence[str], machine: bool = True) -> int:
    """Compose and validate every configuration the command line asks for; return how many were checked.
    Raises ConfigError with one line on the first problem. `machine=False` leaves out what depends on this
    machine (the device, the data), as for jobs that Slurm runs elsewhere."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, OverrideParseException

    from regbench.validation import validate

    args = [a for a in argv if a not in MULTIRUN_FLAGS]
    if any(a.startswith("-") for a in args):
        return 0
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except OverrideParseException as err:
        raise ConfigError(f"cannot read the command line: {str(err).splitlines()[0]}") from None
    choices: list[list[str]] = []
    for override in parsed:
        if override.key_or_group.startswith("hydra"):
            continue  # Hydra checks its own settings
        key = override.get_key_element()  # with its +, ++ or ~
        prefix = key[: len(key) - len(key.lstrip("+~"))]
        if override.is_interval_sweep():  # an Optuna search range: check both ends
            interval = override.value()
            values = [str(interval.start), str(interval.end)]
        elif override.is_sweep_override():
            values = list(override.sweep_string_iterator())
        else:
            values = [override.get_value_element_as_str()]
        choices.append([f"{key}={v}" if not (prefix == "~" and v == "null") else key for v in values])

    base = [values[0] for values in choices]
    # Jobs that a launcher sends to other machines (Slurm) find their device and data there, not here.
    on_this_machine = machine and not any(a.startswith("hydra/launcher=") and "slurm" in a for a in args)
    added = _added_keys(base, OverridesParser.create().parse_overrides(base)) if base else []
    if added:  # a key the config does not define is read by nothing: refuse it
        plain = [o for o in base if o not in {text for text, _ in added}]
        try:
            known = _keys(compose_config(plain))
        except HydraException:
            known = []
        for text, key in added:
            if key not in known:
                raise unknown_key(text, key, known)
    variants = [(None, base)] + [(value, base[:i] + [value] + base[i + 1:])
                                 for i, values in enumerate(choices) for value in values[1:]]
    for changed, overrides in variants:
        try:
            cfg = compose_config(overrides)
        except HydraException as err:
            culprit = changed or _find_culprit(overrides)
            others = [o for o in overrides if o != culprit]
            raise _explain(err, culprit, others) from None
        validate(cfg, machine=on_this_machine)
    return len(variants)


def _find_culprit(overrides: list[str]) -> str | None:
    """The first override that cannot be composed on its own (for the error message)."""
    from hydra.errors import HydraException

    for i, override in enumerate(overrides):
        try:
            compose_config(overrides[: i + 1])
        except HydraException:
            return override
    return None
