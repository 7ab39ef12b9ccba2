"""Where a run ran: the versions of what it ran with, the git state of the checkout, the host. The run
record keeps them, so a number can always be traced to the code that produced it."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from regbench import __version__


def torchvision_version() -> str | None:
    """torchvision.__version__ (with its local tag, e.g. `0.29.1+cu130`) without importing torchvision:
    its import pulls in torch._dynamo, about 2.7 s of every tagging or MovieLens run's start on a CPU.
    The installed metadata drops the local tag, so it is only the fallback."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"].__version__
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return None
    try:
        found = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]",
                          (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8"), re.M)
    except OSError:
        found = None
    return found.group(1) if found else importlib.metadata.version("torchvision")


def versions() -> dict[str, Any]:
    import hydra

    return {"regbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision_version(), "hydra": hydra.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}


def git_state() -> tuple[str | None, bool | None]:
    """(HEAD of the checkout regbench runs from, whether its tracked files differ from HEAD); (None,
    None) outside a git checkout (an installed wheel)."""
    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True,
                                  timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None

    head = git("rev-parse", "HEAD")
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return head.stdout.strip(), dirty


def host() -> str:
    return socket.gethostname()
