"""Where a run ran: the versions of what it ran with, the git state of the checkout, the host. The run
record keeps them, so a number can always be traced to the code that produced it."""
from __future__ import annotations

import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import torch

from regbench import __version__


def versions() -> dict[str, Any]:
    import hydra
    import torchvision

    return {"regbench": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "hydra": hydra.__version__,
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
