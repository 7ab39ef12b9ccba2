"""Stopping a run cleanly: SIGTERM (`kill`, `scancel`) and SIGINT (Ctrl-C) ask the training loop to stop at
the next step, so the record and the last finished epoch's checkpoint are written; a second Ctrl-C stops
at once. Under a job-scheduler wrapper that owns a signal (submitit: SIGUSR2 means "time limit or
pre-emption: checkpoint and requeue", SIGTERM is ignored) the run stops on SIGUSR2 too, and
RunInterrupted.handoff passes the signal on once the record is written, so the wrapper requeues it."""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from regbench import checkpoints

log = logging.getLogger(__name__)


# A signal that asked this process to stop while a run was in its last step, so that run completed: the
# process must not go on to another run or trial (a tune worker once began the next trial after SIGTERM,
# 2026-12-06). Set by the handler, cleared by whatever stops because of it.
_unheeded: list[int] = []


def heed_stop() -> int | None:
    """The signal that asked this process to stop and has not stopped anything yet, if any, now counted as
    acted on."""
    signum = _unheeded[-1] if _unheeded else None
    _unheeded.clear()
    return signum


def _remember(signum: int, frame: Any) -> None:
    """SIGTERM between two runs of a worker process: kept for the next run or trial to heed (remember_stops)."""
    _unheeded[:] = [signum]


def remember_stops() -> None:
    """For a process that runs one run after another (a `regbench tune` worker): SIGTERM between two runs is
    remembered instead of ending the process at once, so that it stops at its next check (the next run's
    start, the next trial's choice) with its storage and records consistent. Ended at once, a worker that
    had just been given a trial left it RUNNING in the storage (seen in CI, 2026-12-07). During a run the
    run's own handler takes over (StopSignals.watching)."""
    signal.signal(signal.SIGTERM, _remember)


class RunInterrupted(Exception):
    """SIGTERM or SIGINT stopped the run between two steps (the last finished epoch's checkpoint stays), or
    before it started (epoch None: the signal came as this process's previous run finished)."""

    def __init__(self, signum: int | None, epoch: int | None, run_dir: Path, handoff: Any = None) -> None:
        name = signal.Signals(signum).name if signum else "a signal"
        handoff = handoff if signum == signal.SIGUSR2 else None
        again = ("the scheduler requeues the job, which resumes from" if handoff else
                 "run the same command again to resume from")
        last = run_dir / checkpoints.CHECKPOINT_DIR / checkpoints.LAST_CHECKPOINT
        if epoch is None:
            message = f"stopped by {name} before the run in {run_dir} started; run the same command again to train it"
        else:
            message = f"stopped by {name} during epoch {epoch}; {again} {last} (if an epoch had finished)"
        super().__init__(message)
        self.signum = signum or signal.SIGTERM
        # Called with (signum, None) after the record is written: submitit then checkpoints and requeues.
        self.handoff = handoff


class StopSignals:
    """The signal that asked the run to stop (None while none has), and a wrapper's SIGUSR2 handler."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.handoff: Any = None

    @property
    def asked(self) -> bool:
        return self.signum is not None

    def interrupted(self, epoch: int, run_dir: Path) -> RunInterrupted:
        heed_stop()
        return RunInterrupted(self.signum, epoch, run_dir, self.handoff)

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Handle the signals while the block runs (only the main thread can), then restore the handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask_to_stop(signum: int, frame: Any) -> None:
            if self.signum is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.signum = signum
            _unheeded[:] = [signum]
            log.warning("%s received: stopping after this step (the last finished epoch's checkpoint stays)",
                        signal.Signals(signum).name)

        owned = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR2)}
        ours = [signal.SIGINT]
        # submitit installs a handler that ignores SIGTERM: keep it (a worker's remembering one is ours)
        if not callable(owned[signal.SIGTERM]) or owned[signal.SIGTERM] is _remember:
            ours.append(signal.SIGTERM)
        if callable(owned[signal.SIGUSR2]):       # submitit's checkpoint-and-requeue
            ours.append(signal.SIGUSR2)
            self.handoff = owned[signal.SIGUSR2]
        previous = {sig: signal.signal(sig, ask_to_stop) for sig in ours}
        if _unheeded and self.signum is None:  # remembered as this run was being built: stop before its first step
            self.signum = _unheeded[-1]
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
