"""trainer.flush_denormal: a run treats subnormal floats as zero on the CPU (arithmetic on them is tens of
times slower: benchmarks/denormals.py), says so in its record, and says when torch's threads did not all
take the mode; it is cosmetic (the same run id either way). Real runs on tiny data, real CPU arithmetic."""
from __future__ import annotations

import subprocess
import sys

import torch

from regbench import checkpoints, runner

def flushes_here() -> bool:
    """Whether this thread's CPU arithmetic treats a subnormal as zero now."""
    subnormal = torch.full((4,), runner.SUBNORMAL_BITS, dtype=torch.int32).view(torch.float32)
    return bool((subnormal * 1.0 == 0).all())


def test_a_run_flushes_subnormals_by_default_records_it_and_the_key_keeps_the_run_id(small_cfg, tmp_path):
    try:
        on = small_cfg("movielens", "trainer.threads=1")
        record = runner.run(on, tmp_path / "on")
        assert record["flush_denormal"] is True and flushes_here()
        off = small_cfg("movielens", "trainer.threads=1", "trainer.flush_denormal=false", "seed=1")
        assert runner.run(off, tmp_path / "off")["flush_denormal"] is False and not flushes_here()
        # Cosmetic, as trainer.threads is: the same run whichever the mode (it changes no metric the record
        # keeps: only values below 1e-38 become 0).
        assert checkpoints.run_id(small_cfg("movielens", "trainer.flush_denormal=false")) == checkpoints.run_id(
            small_cfg("movielens"))
    finally:
        torch.set_flush_denormal(False)


PROBE = """
import logging, torch
from regbench.runner import set_flush_denormal
logging.basicConfig(level=logging.WARNING, format="%(message)s")
torch.set_num_threads(2)
if {started}:
    torch.full((1 << 20,), 1.0).sum()  # torch's intra-op threads start now, before the mode is set
print("flushed on every thread:", set_flush_denormal(True))
"""


def probe(started: bool) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE.format(started=started)], capture_output=True, text=True,
                          timeout=120, check=True)


def test_threads_started_before_the_run_keep_subnormals_and_the_run_says_so():
    """The mode is per thread and inherited at a thread's start: in a fresh process (the command) torch's
    threads start after the run sets it; in one that computed before (a notebook), they do not have it."""
    fresh = probe(started=False)
    assert "flushed on every thread: True" in fresh.stdout and fresh.stderr == ""
    late = probe(started=True)
    assert "flushed on every thread: False" in late.stdout
    assert late.stderr.strip() == ("trainer.flush_denormal=true reached only some of torch's 2 CPU threads (they "
                                   "started before this run, in this process): subnormal floats stay slow in the "
                                   "others; run in a fresh process, or with trainer.threads=1")
