#!/usr/bin/env bash
# The study (experiment=study) on a fresh GPU machine, in one command. On the CPU machine first run
# scripts/study_prepare.sh, which puts the wheels and the datasets into .xfer/ (git-ignored), then
# have the device call carry .xfer, e.g.
#   run(command="bash scripts/study.sh $OUT --checks --deadline 480 --seeds 0", carry=[".xfer"], timeout_s=600)
#   bash scripts/study.sh OUTDIR --seeds 1 2 --earlier docs/results/study-h200/runs   # a later call
# --checks (first, optional) runs benchmarks/gpu_checks.py before the study; the options after it go to
# scripts/study.py (deadline, seeds, tasks, jobs per task, earlier results, Hydra overrides).
# REGBENCH_STUDY_SMOKE=1 runs the same 15 configurations at toy size on a CPU (an integration test).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bash scripts/study.sh OUTDIR [scripts/study.py options]" >&2; exit 2; }
OUTDIR=$1; shift
XFER=${REGBENCH_XFER:-$PWD/.xfer}
mkdir -p "$OUTDIR"

# The GPU machine has torch, numpy, pandas, scipy and matplotlib but not Hydra: those travel as wheels.
if ! (cd /tmp && python3 -c "import hydra, omegaconf, regbench.conf") 2>/dev/null; then
  [ -d "$XFER/wheels" ] || { echo "study.sh: regbench is not installed and $XFER/wheels is missing: run scripts/study_prepare.sh first" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/regbench-site "$XFER"/wheels/*.whl
  export PYTHONPATH=/tmp/regbench-site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -z "${REGBENCH_DATA:-}" ] && [ -d "$XFER/data" ]; then export REGBENCH_DATA=$XFER/data; fi
export REGBENCH_CACHE=${REGBENCH_CACHE:-/tmp/regbench-cache}    # the carried data folder stays as it came
export REGBENCH_OUTPUT=${REGBENCH_OUTPUT:-/tmp/regbench-outputs}
export PYTHONUNBUFFERED=1

{ date -u +"%Y-%m-%dT%H:%M:%SZ"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU";
  (cd /tmp && python3 -c "import torch, regbench; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'regbench', regbench.__version__)");
  nproc; } > "$OUTDIR/machine.txt" 2>&1 || true
# --checks first: does a CUDA step wait for the host, kernel launches per step, the bf16 matrix rate
# (benchmarks/gpu_checks.py, about a minute), into OUTDIR/gpu_checks.json.
if [ "${1:-}" = "--checks" ]; then
  shift
  python3 benchmarks/gpu_checks.py "$OUTDIR/gpu_checks.json" || echo "gpu_checks.py failed: exit $?" >> "$OUTDIR/study.log"
fi
python3 scripts/study.py "$OUTDIR" "$@"
