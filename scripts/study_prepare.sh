#!/usr/bin/env bash
# Before a device call, on the CPU machine: everything scripts/study.sh needs that the GPU machine lacks,
# in .xfer/ (git-ignored), which the call carries (64 MiB at most with the working tree):
#   .xfer/wheels/  regbench (this checkout), hydra-core, omegaconf, antlr4-python3-runtime
#   .xfer/data/    cifar10/cifar10-jpeg.tar.gz (the 92.7 MB tar gzips to about 19 MB), conll2003/*.txt,
#                  movielens/ml-100k.zip
# REGBENCH_DATA names the folder with the datasets (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${REGBENCH_DATA:-../shared/data}
PY=${PYTHON:-python3}
rm -rf .xfer
mkdir -p .xfer/wheels .xfer/data/cifar10 .xfer/data/conll2003 .xfer/data/movielens
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
"$PY" -m pip wheel -q --no-deps -w .xfer/wheels .
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .xfer/wheels \
    "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)"
# antlr4-python3-runtime 4.9.3 is published as a source archive only: build its (pure-Python) wheel here.
"$PY" -m pip wheel -q --no-deps -w .xfer/wheels "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
gzip -c "$DATA/cifar10/cifar10-jpeg.tar" > .xfer/data/cifar10/cifar10-jpeg.tar.gz
cp "$DATA"/conll2003/*.txt .xfer/data/conll2003/
cp "$DATA/movielens/ml-100k.zip" .xfer/data/movielens/
ls -l .xfer/wheels
du -sh .xfer
size=$(du -sb .xfer | cut -f1)
[ "$size" -lt $((56 * 1024 * 1024)) ] || { echo "study_prepare.sh: .xfer is $size bytes, too close to the 64 MiB a call carries" >&2; exit 1; }
