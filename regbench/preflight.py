"""Check a whole command line before Hydra starts anything, so a typo in the 40th job of a grid is a
one-line error now, not a traceback hours later.

Every sweep value is composed (each override at its first value, then each other value of each sweep
in turn: linear, not the full grid) and validated; Hydra's own composition errors are turned into one
line that names the key, the bad value and what is allowed."""
from __future__ import annotations

import copy
import difflib
import functools
from collections.abc import Sequence
from importlib.resources import files

from omegaconf import DictConfig

from regbench.errors import ConfigError

# Hydra's own flags (--cfg, --help, -cn, ...) are Hydra's business: a command line with them is not checked.
MULTIRUN_FLAGS = ("-m", "--multirun")


def compose_config(overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The config the `regbench` command builds for these overrides (with Hydra's own settings under
    `hydra` when with_hydra is true): a copy of its own, the caller may change it."""
    if with_hydra:  # Hydra's settings hold the working directory and the time: composed afresh
        return _compose(tuple(overrides), True)
    return copy.deepcopy(_composed(tuple(overrides)))


@functools.lru_cache(maxsize=256)
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    """One composition per command line and process: Hydra reads and merges some twenty YAML files each time
    (0.1-0.25 s), and a tune composes every trial, preflight every sweep value, validation every job.
    Interpolations stay unresolved, so the copies still read the environment and the clock when used."""
    return _compose(overrides, False)


def _compose(overrides: tuple[str, ...], with_hydra: bool) -> DictConfig:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="regbench.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=with_hydra)


def _keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    out = []
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        out.append(name)
        if isinstance(value, DictConfig):
            out.extend(_keys(value, f"{name}."))
    return out


def _explain(err: Exception, override: str | None, others: list[str], job: str | None = None) -> ConfigError:
    """One line for Hydra's composition errors; `job` names the sweep value whose job it was."""
    from hydra.errors import MissingConfigException

    where = f"in the job with {job}: " if job and job != override else ""
    if isinstance(err, MissingConfigException) and err.options is not None:
        group = (err.missing_cfg_file or "").split("/")[0] or (override or "").partition("=")[0]
        shown = override or group
        return ConfigError(f"{where}{shown}: no such option; choose one of {', '.join(err.options)}")
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if override and text.startswith("Could not override"):
        key = override.partition("=")[0].lstrip("+~")
        error = unknown_key(override, key, others)
        return ConfigError(f"{where}{error}")
    return ConfigError(f"{where}{override + ': ' if override else ''}{text}")


# The config group whose options define a key's section (data.* comes with the task).
SECTION_GROUP = {"data": "task", "model": "model", "optimizer": "optimizer", "schedule": "schedule",
                 "trainer": "trainer", "augment": "augment", "regularizer": "regularizer", "logger": "logger"}


def unknown_key(override: str, key: str, others: list[str]) -> ConfigError:
    """One line for a key that no part of the run reads: it is refused, never silently ignored. A
    suggestion only ever names a key of this configuration: the task's own spelling of another task's
    key (Task.equivalent_keys), else a key of the same section whose last part is close; and where other
    options of the group have the key, they are named."""
    try:
        cfg = compose_config(others)
        known = _keys(cfg)
    except Exception:  # noqa: BLE001 - the suggestion is a courtesy
        cfg, known = None, []
    close = _close_keys(key, known, cfg)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    owners = _options_with_key(key, others, cfg)
    group = SECTION_GROUP.get(key.split(".")[0])
    here = f"{group}={cfg[group].name}" if cfg is not None and group in cfg and "name" in cfg[group] else None
    if owners and here:
        shown = f"{group}=" + ", ".join(owners[:4]) + (", ..." if len(owners) > 4 else "")
        return ConfigError(f"{override}: {here} has no key {key!r}, a key of {shown}{hint}; regbench refuses "
                           "keys that nothing would read rather than ignore them")
    return ConfigError(f"{override}: there is no key {key!r} in this configuration{hint}; regbench refuses keys "
                       "that nothing would read rather than ignore them")


def _close_keys(key: str, known: list[str], cfg: DictConfig | None) -> list[str]:
    """The task's declared equivalent, else keys of the same section with a close last part (the whole
    dotted name would make model.width "close" to model.init through the shared "model.")."""
    if cfg is not None:
        try:
            from regbench.tasks import task_class

            equivalent = task_class(cfg).equivalent_keys.get(key)
        except Exception:  # noqa: BLE001 - a task that cannot be imported is named by validation
            equivalent = None
        if equivalent in known:
            return [equivalent]
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    return [siblings[m] for m in difflib.get_close_matches(leaf, list(siblings), n=3, cutoff=0.75)]


def _options_with_key(key: str, others: list[str], cfg: DictConfig | None) -> list[str]:
    """The other options of the key's group (model=cnn13 for model.width) in whose configuration it exists."""
    group = SECTION_GROUP.get(key.split(".")[0])
    if cfg is None or group is None or group not in config_groups():
        return []
    current = cfg[group].get("name") if group in cfg else None
    owners = []
    kept = [o for o in others if o.partition("=")[0].lstrip("+~") != group]
    for option in sorted(_group_options(group)):
        if option in (current, "custom"):
            continue
        try:
            if key in _keys(compose_config([*kept, f"{group}={option}"])):
                owners.append(option)
        except Exception:  # noqa: BLE001 - an option that does not compose with the rest owns nothing here
            continue
    return owners


def _group_options(group: str) -> list[str]:
    folder = files("regbench.conf").joinpath(*group.split("/"))
    return [e.name[:-5] for e in folder.iterdir() if e.name.endswith(".yaml")]


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
OPEN_KEYS = {"model=custom": "model.", "task=custom": "data.", "optimizer=custom": "optimizer.params."}


def open_prefixes(args: Sequence[str]) -> tuple[str, ...]:
    """Where a user's own code reads keys regbench cannot know: model.* of model=custom, data.* of task=custom,
    optimizer.params.* of an optimizer named by _target_."""
    found = tuple(prefix for choice, prefix in OPEN_KEYS.items() if choice in args)
    if any(a.lstrip("+").startswith("optimizer._target_=") for a in args) and "optimizer.params." not in found:
        found += ("optimizer.params.",)
    return found


def allow_new_keys(args: list[str]) -> list[str]:
    """With model=custom (task=custom, an optimizer._target_), `model.width=32` (`data.n=100`,
    `optimizer.params.rho=0.9`) needs no +: it becomes ++model.width=32, which Hydra takes for a new key or
    for an existing one."""
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


# Hydra's flags, and those of them that take a value (`--cfg job`, `-cn NAME`).
HYDRA_FLAGS = ("--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--resolve", "--package", "-p",
               "--run", "-r", "--multirun", "-m", "--shell-completion", "-sc", "--config-path", "-cp",
               "--config-name", "-cn", "--config-dir", "-cd", "--info", "-i", "--experimental-rerun")
FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                    "--config-dir", "-cd", "--experimental-rerun", "--info", "-i", "--shell-completion", "-sc")
# The options of `regbench compare` and `report`, given to a training command by mistake.
SUBCOMMAND_OPTIONS = ("--by", "--metric", "--baseline", "--no-baseline", "--bootstrap", "--out", "--plots", "--wide")


def merge_overrides(*groups: Sequence[str]) -> list[str]:
    """Overrides from several sources (defaults, then changes) as one command line with each key once, the
    last value winning, in first-seen order: regbench refuses a key given twice, so a script that builds a
    command from defaults and changes merges them first."""
    merged: dict[str, str] = {}
    for override in (o for group in groups for o in group):
        merged[override.partition("=")[0].lstrip("+~")] = override
    return list(merged.values())


def check_words(argv: Sequence[str], subcommands: Sequence[str]) -> None:
    """What Hydra's parser would answer with a usage page or a parse error, as one line that says what
    was meant: a misspelt subcommand, `regularizer bn` for regularizer=bn, a compare option given to a
    run, a key given twice (Hydra would silently keep the last), a list that ends in a comma."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    args = list(argv)
    plain: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            flag = arg.split("=")[0]
            if flag in SUBCOMMAND_OPTIONS:
                raise ConfigError(f"{arg} is an option of `regbench compare` and `regbench report`, not of a run: "
                                  f"regbench compare PATH {arg} ...")
            if flag not in HYDRA_FLAGS:
                raise ConfigError(f"{arg}: no such option; a run takes key=value overrides (e.g. regularizer=bn) "
                                  "and Hydra's flags (-m, --cfg job, --info, --help)")
            i += 2 if flag in FLAGS_WITH_VALUE and "=" not in arg else 1
            continue
        if "=" not in arg:
            raise _word_error(arg, args[i + 1] if i + 1 < len(args) else None, subcommands, i == 0)
        if arg.replace(" ", "") == "hydra/sweeper=tune":  # users' commands knew this name
            raise ConfigError("hydra/sweeper=tune was Hydra's Optuna plugin, which needs optuna < 3 and is gone: use "
                              "`regbench tune` (docs/tuning.md), e.g. regbench tune task=movielens tune.trials=16")
        plain.append(arg)
        i += 1
    seen: dict[str, str] = {}
    for arg in plain:
        try:
            key = OverridesParser.create().parse_override(arg).key_or_group
        except HydraException as err:
            raise ConfigError(_parse_error(arg, err)) from None
        if key in seen:
            raise ConfigError(f"{key} is given twice ({seen[key]} and {arg}); Hydra would keep only the last: "
                              f"give it once, with every value in one list (e.g. {key}=a,b)")
        seen[key] = arg


def _parse_error(arg: str, err: Exception) -> str:
    if arg.rstrip().endswith(","):
        return f"{arg}: a list of values cannot end with a comma: {arg.rstrip().rstrip(',')}"
    return f"{arg}: cannot be read as key=value ({str(err).splitlines()[0]})"


def _word_error(word: str, following: str | None, subcommands: Sequence[str], first: bool) -> ConfigError:
    close = difflib.get_close_matches(word, subcommands, n=1, cutoff=0.6)
    if first and close:
        return ConfigError(f"{word}: no such command; did you mean `regbench {close[0]}`?")
    if word in config_groups() or word.split(".")[0] in SECTION_GROUP:
        value = following if following and "=" not in following and not following.startswith("-") else "VALUE"
        return ConfigError(f"{word}: a setting is written key=value, without spaces: {word}={value}")
    commands = f" or one of the commands {', '.join(subcommands)}" if subcommands else ""
    return ConfigError(f"{word}: expected key=value (e.g. regularizer=bn){commands}")


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
    hydra_groups = [a for a, o in zip(args, parsed) if o.key_or_group.startswith("hydra/")]
    if hydra_groups:  # hydra/launcher=..., hydra/sweeper=...: their options are checked here too
        try:
            compose_config(hydra_groups, with_hydra=True)
        except HydraException as err:
            raise _explain(err, _find_hydra_culprit(hydra_groups), []) from None
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
                raise unknown_key(text, key, plain)
    variants = [(None, base)] + [(value, base[:i] + [value] + base[i + 1:])
                                 for i, values in enumerate(choices) for value in values[1:]]
    for changed, overrides in variants:
        try:
            cfg = compose_config(overrides)
        except HydraException as err:
            # In a sweep's job the value that changed may be fine and another key fail beside it
            # (model.width with task=conll2003): name the override that fails, and the job.
            culprit = _find_culprit(overrides) or changed
            others = [o for o in overrides if o != culprit]
            raise _explain(err, culprit, others, job=changed) from None
        validate(cfg, machine=on_this_machine)
    return len(variants)


def _find_hydra_culprit(overrides: list[str]) -> str | None:
    from hydra.errors import HydraException

    for override in overrides:
        try:
            compose_config([override], with_hydra=True)
        except HydraException:
            return override
    return None


def _find_culprit(overrides: list[str]) -> str | None:
    """The first override that cannot be composed on its own (for the error message)."""
    from hydra.errors import HydraException

    for i, override in enumerate(overrides):
        try:
            compose_config(overrides[: i + 1])
        except HydraException:
            return override
    return None
