#!/usr/bin/env bash
# Device-session script: tagging hyper-parameter exploration, one line of overrides per run in $1.
R=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 REGBENCH_DATA=$R/.xfer/data REGBENCH_CACHE=/tmp/cache OMP_NUM_THREADS=1
cd /tmp && mkdir -p g
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
s0=$(date +%s)
python3 -m regbench task=conll2003 trainer.max_epochs=1 regularizer=dropout trainer.progress=false trainer.threads=1 trainer.save_checkpoint=false hydra.run.dir=/tmp/solo 2>&1 | grep -E "epoch|completed|rror"
echo "solo 1-epoch run: $(( $(date +%s) - s0 )) s"
start=$(date +%s)
while read -r name args; do
  [ -z "$name" ] && continue
  python3 -m regbench $args trainer.threads=1 trainer.progress=false trainer.save_checkpoint=false hydra.run.dir=/tmp/g/$name > /tmp/g/$name.log 2>&1 &
done < "$R/$1"
while [ $(( $(date +%s) - start )) -lt ${DEADLINE:-480} ] && [ -n "$(jobs -r)" ]; do sleep 5; done
echo "wall: $(( $(date +%s) - start )) s; still running: $(jobs -r | wc -l)"
for d in /tmp/g/*/; do n=$(basename $d); echo "== $n $(tail -1 /tmp/g/$n.log | cut -c1-150)"; done
tar czf $OUT/tune.tar.gz -C /tmp/g .
