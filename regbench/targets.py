"""Import what a `_target_` names (a user's model factory, Task class, ...), with one line that gives the
real reason when it cannot: Hydra's own locator ends its message with the module's error on a line of its
own, which a one-line error cut off ("cannot be imported (Error loading 'my_model.build':)")."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from regbench.errors import ConfigError


def locate(key: str, target: str) -> Any:
    """The object at dotted path `target` (PACKAGE.MODULE.NAME), or ConfigError naming `key`, the module
    that could not be found or failed to import, and where Python looked."""
    parts = target.split(".")
    if not target or not all(parts):
        raise ConfigError(f"{key}={target}: not a dotted path; write PACKAGE.MODULE.NAME, e.g. my_model.build")
    module, depth = None, 0
    for i in range(1, len(parts) + 1):  # the longest importable prefix; the rest are attributes
        name = ".".join(parts[:i])
        try:
            module, depth = importlib.import_module(name), i
        except ModuleNotFoundError as err:
            if err.name != name:  # the module exists but imports something that does not
                raise _failed(key, target, name, err) from None
            break
        except Exception as err:  # noqa: BLE001 - the user's module failed while it was imported
            raise _failed(key, target, name, err) from None
    if module is None:
        folder = os.getcwd()
        where = (f"the current folder {folder} and the installed packages" if folder in sys.path or "" in sys.path
                 else "the installed packages")
        raise ConfigError(f"{key}={target}: no module {parts[0]!r} on Python's path (searched {where}): run "
                          f"regbench from the folder that holds {parts[0]}.py, or add its folder to PYTHONPATH")
    found: Any = module
    for i, attribute in enumerate(parts[depth:], start=depth):
        if not hasattr(found, attribute):
            owner = ".".join(parts[:i])
            raise ConfigError(f"{key}={target}: {owner} has no {attribute!r} (in {getattr(module, '__file__', owner)})")
        found = getattr(found, attribute)
    return found


def _failed(key: str, target: str, name: str, err: BaseException) -> ConfigError:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
    return ConfigError(f"{key}={target}: importing {name} failed: {type(err).__name__}: {err}{where}")
