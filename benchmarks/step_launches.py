"""How many ops does one training step launch? This checkout against an earlier revision, on the CPU.

    REGBENCH_DATA=../shared/data python benchmarks/step_launches.py --rev <git revision>

On a GPU the tagging step is bound by kernel launches (the CRF loops over time steps in Python), so
the count of launched ops per step is what matters there, and torch.profiler counts ops on a CPU as
well. Counted: the leaf aten ops of a profiled training epoch (forward, backward, optimizer, the
gradient monitor, everything `train_epoch` does), except view and allocation ops, which launch no
kernel; divided by the steps. An LSTM over packed sequences runs as dozens of small ops per time step
on a CPU but as one cuDNN call on a GPU, so each LSTM call counts as one op forward and one backward,
as on the GPU. Both revisions train the same batches (same configs from this checkout, same seeds),
one epoch each after one warm-up epoch.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from importlib import import_module
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from revision_ab import EpochTrainer, export_revision  # noqa: E402

SETUPS = {
    "CoNLL-2003 BiLSTM-CRF + bn_dropout (batch 64)": ["task=conll2003", "regularizer=bn_dropout", "data.limit_train=640"],
    "CoNLL-2000 BiLSTM-CRF + bn_dropout (batch 64)": ["task=conll2000", "regularizer=bn_dropout", "data.limit_train=640"],
    "MovieLens-100K two_tower + bn_dropout (batch 2048)": ["task=movielens", "model=two_tower",
                                                           "regularizer=bn_dropout", "data.max_users=200"],
    "CIFAR-10 CNN-13 w0.25 + bn_dropout (batch 128)": ["task=cifar10", "model.width=0.25", "regularizer=bn_dropout",
                                                       "data.limit_train=1280"],
}
# Ops that only make a view, allocate or read a host value: no kernel is launched for them (a copy
# they make shows as their own copy_ child). Host reads are test_host_sync.py's business.
NO_KERNEL = {"aten::view", "aten::_unsafe_view", "aten::as_strided", "aten::expand", "aten::select", "aten::slice",
             "aten::unsqueeze", "aten::squeeze", "aten::transpose", "aten::t", "aten::permute", "aten::narrow",
             "aten::detach", "aten::alias", "aten::lift_fresh", "aten::empty", "aten::empty_strided",
             "aten::resize_", "aten::set_", "aten::_reshape_alias", "aten::unfold", "aten::diagonal",
             "aten::split", "aten::unbind", "aten::chunk", "aten::split_with_sizes", "aten::_local_scalar_dense",
             "aten::is_nonzero", "aten::result_type", "aten::_has_compatible_shallow_copy_type",
             "aten::resolve_conj", "aten::resolve_neg", "aten::as_strided_", "aten::reshape", "aten::flatten",
             "aten::unflatten", "aten::new_empty", "aten::empty_like", "aten::new_empty_strided", "aten::view_as",
             "aten::expand_as", "aten::movedim", "aten::item"}
# Ops that return their input unchanged when nothing needs converting or copying (no children then).
NO_OP_WHEN_ALONE = {"aten::to", "aten::contiguous", "aten::reshape", "aten::flatten", "aten::type_as",
                    "aten::expand_as", "aten::view_as"}


def counted(event) -> bool:
    """Whether a profiler event is one launched op: an aten op that is not a view or an allocation, that
    did not hand its work to other counted ops, and that was not a no-op."""
    if not event.name.startswith("aten::") or event.name in NO_KERNEL:
        return False
    children = [c for c in event.cpu_children if c.name.startswith("aten::")]
    if any(c.name not in NO_KERNEL for c in children):
        return False  # a composite op: its children are what runs
    return not (event.name in NO_OP_WHEN_ALONE and not children)


LSTM = "aten::lstm"
BACKWARD = "autograd::engine::evaluate_function: "


def _ancestors(event):
    parent = event.cpu_parent
    while parent is not None:
        yield parent
        parent = parent.cpu_parent


def launched_ops(trainer: EpochTrainer, epoch: int) -> tuple[float, collections.Counter]:
    """(launched ops per step, the count of each op name) for one training epoch."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_epoch(epoch)
    events = prof.events()
    # The autograd nodes an LSTM call created: their backward is the one cuDNN backward call.
    lstm_nodes = {e.sequence_nr for e in events if e.sequence_nr >= 0 and
                  (e.name == LSTM or any(a.name == LSTM for a in _ancestors(e)))}
    counts: collections.Counter = collections.Counter()
    for event in events:
        if event.name == LSTM:
            counts["aten::lstm forward + backward (one cuDNN call each)"] += 2
            continue
        if not counted(event):
            continue
        ancestors = list(_ancestors(event))
        if any(a.name == LSTM or (a.name.startswith(BACKWARD) and a.sequence_nr in lstm_nodes) for a in ancestors):
            continue  # inside an LSTM, forward or backward: counted above
        counts[event.name] += 1
    return sum(counts.values()) / trainer.steps_per_epoch, counts


def crf_ops(crf_class, num_tags: int, length: int, batch: int = 64) -> tuple[int, int]:
    """(ops of the CRF loss forward + backward, ops of Viterbi decoding) for a batch of `length` tokens."""
    torch.manual_seed(0)
    crf = crf_class(num_tags)
    emissions = torch.randn(batch, length, num_tags, requires_grad=True)
    tags = torch.randint(num_tags, (batch, length))
    mask = torch.arange(length)[None, :] < torch.randint(1, length + 1, (batch,)).sort(descending=True).values[:, None]
    counts = []
    for work in (lambda: crf.nll(emissions, tags, mask).sum().backward(), lambda: crf.viterbi(emissions, mask)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            work()
        counts.append(sum(1 for e in prof.events() if counted(e)))
    return counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare with")
    parser.add_argument("--setup", choices=range(len(SETUPS)), type=int, nargs="+", default=range(len(SETUPS)))
    parser.add_argument("--top", type=int, default=0, help="also list the N most frequent ops of each side")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides added to every setup")
    opts = parser.parse_args()
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        old = export_revision(opts.rev, Path(tmp))
        sys.path.insert(0, tmp)
        old_crf = import_module(f"{old}.models.crf").CRF
        new_crf = import_module("regbench.models.crf").CRF
        print(f"# ops of the CRF alone, batch 64 (torch {torch.__version__}, CPU profiler)")
        print(f"| tags x tokens | {opts.rev} loss fwd+bwd | this checkout loss fwd+bwd | {opts.rev} Viterbi | "
              "this checkout Viterbi |")
        print("|---|---:|---:|---:|---:|")
        for tags, length in ((9, 10), (9, 40), (9, 124), (23, 40)):
            (old_loss, old_viterbi), (new_loss, new_viterbi) = crf_ops(old_crf, tags, length), \
                crf_ops(new_crf, tags, length)
            print(f"| {tags} x {length} | {old_loss} | {new_loss} | {old_viterbi} | {new_viterbi} |", flush=True)
        print(f"\n# launched ops per training step (torch {torch.__version__}, CPU profiler)")
        print(f"| setup | {opts.rev} | this checkout | {opts.rev} / this |")
        print("|---|---:|---:|---:|")
        for name in [list(SETUPS)[i] for i in opts.setup]:
            with initialize_config_module(config_module="regbench.conf", version_base="1.3"):
                cfg = compose("config", overrides=[*SETUPS[name], "trainer.progress=false", "trainer.device=cpu",
                                                     *opts.overrides])
            per_step, top = {}, {}
            for label, package in (("old", old), ("new", "regbench")):
                trainer = EpochTrainer(package, cfg, device, Path(tmp) / label)
                trainer.train_epoch(1)  # warm-up
                per_step[label], counts = launched_ops(trainer, 2)
                top[label] = counts.most_common(opts.top)
            print(f"| {name} | {per_step['old']:.0f} | {per_step['new']:.0f} | "
                  f"{per_step['old'] / per_step['new']:.2f} |", flush=True)
            for label in ("old", "new") if opts.top else ():
                print(f"#   {label}: " + ", ".join(f"{op} {n / trainer.steps_per_epoch:.0f}" for op, n in top[label]))


if __name__ == "__main__":
    main()
