#!/usr/bin/env bash
# The study at CPU scale (docs/study.md), one slice at a time, for a machine whose disk does not outlive a
# session (nothing but the git repository carries over): restore a step's unfinished state from
# docs/results/study-cpu/<step> (run records and the Optuna storage: checkpoints are never committed), run the
# step until it finishes or MINUTES pass, stop it with SIGTERM (a running trial is queued again; with no
# checkpoint in the next slice it trains again from its first epoch) and copy its records back into
# docs/results/study-cpu/<step>, ready to commit. Finished runs and trials are reused, so the same command
# continues where the last slice stopped.
#
#   REGBENCH_DATA=/path/to/data scripts/study_cpu.sh STEP MINUTES
#       STEP: conll2000-fixed, conll2000-tuned, cifar10-fixed, cifar10-tuned
#   R             live folders (default: ../study-runs beside the repository)
#   STUDY_COMMIT  run regbench from a worktree of the repository at this commit ($R/tree-<commit>, made once),
#                 with this environment's python: every record of a step then carries one commit, whatever
#                 lands on main between slices (default: regbench as installed)
# Exit status: 0 when the step finished, 124 when MINUTES ran out (state saved), else the step's own.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: scripts/study_cpu.sh STEP MINUTES" >&2; exit 2; }
step=$1 minutes=$2
repo=$(cd "$(dirname "$0")/.." && pwd)
R=${R:-$repo/../study-runs}
mkdir -p "$R"
regbench=(regbench)
if [ -n "${STUDY_COMMIT:-}" ]; then
  tree=$R/tree-$STUDY_COMMIT
  [ -d "$tree" ] || git -C "$repo" worktree add -q --detach "$tree" "$STUDY_COMMIT"
  export PYTHONPATH=$tree
  regbench=(python -m regbench)
fi
kept=$repo/docs/results/study-cpu/$step
live=$R/study-cpu/$step
C30=(model.width=0.25 data.limit_train=10000 data.limit_eval=2000 trainer.max_epochs=30)
PAR=(hydra/launcher=parallel hydra.launcher.n_jobs=2 trainer.threads=1)
TUNE=(tune.trials=8 tune.pruner=asha tune.workers=2 "tune.dir=$live")
results=$repo/docs/results
case $step in
  conll2000-fixed)
    cmd=(-m task=conll2000 regularizer=none,bn,dropout,bn_dropout,bn_dropout_gc seed=0,1,2 "${PAR[@]}"
         "hydra.sweep.dir=$live") ;;
  conll2000-tuned)
    cmd=(tune task=conll2000 "${TUNE[@]}" "tune.fixed=[$results/study-cpu/conll2000-fixed]") ;;
  cifar10-fixed)  # bn_dropout's three runs are issue 19's, at this scale: not trained again
    cmd=(-m "${C30[@]}" regularizer=none,bn,dropout,bn_dropout_gc seed=0,1,2 "${PAR[@]}" "hydra.sweep.dir=$live") ;;
  cifar10-tuned)  # the default init keeps `none` at chance at this scale: the init is searched too
    cmd=(tune "${C30[@]}" "${TUNE[@]}" '+tune.space.model.init={choices:[default,kaiming]}'
         "tune.fixed=[$results/study-cpu/cifar10-fixed,$results/issue19-cifar30/bn_dropout]") ;;
  *) echo "unknown step $step: one of conll2000-fixed, conll2000-tuned, cifar10-fixed, cifar10-tuned" >&2; exit 2 ;;
esac

# What a record needs and a commit may hold: no checkpoints, test outputs or predictions, logs, locks or Hydra's copies
# (metrics.json has the config).
keep() {
  mkdir -p "$2"
  tar -C "$1" --exclude=checkpoints --exclude=.hydra --exclude='*.log' --exclude='*.lock' --exclude=test_outputs.npz --exclude=test_predictions.txt -cf - . | tar -C "$2" -xf -
}

mkdir -p "$live"
[ -d "$kept" ] && keep "$kept" "$live"
echo "$(date -Is) $step: start, $minutes minutes at most" >> "$R/study.log"
status=0
( cd "$R" && REGBENCH_OUTPUT=$R timeout -s TERM -k 600 "${minutes}m" "${regbench[@]}" "${cmd[@]}" ) \
  > "$R/$step.out" 2>> "$R/$step.err" || status=$?
echo "$(date -Is) $step: exit $status" >> "$R/study.log"
keep "$live" "$kept"
exit $status
