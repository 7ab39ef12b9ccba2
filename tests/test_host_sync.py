"""Training steps never make the host wait for the device.

On a GPU, every host read of a device value (`.item()`, `float(t)`, `bool(t)`, `.cpu()`), every
operation whose output size depends on the data (boolean indexing, `nonzero`) and every blocking copy
from host to device (`t.to(device)`, `torch.tensor(..., device=...)`) stalls the CPU until the GPU has
finished all queued work, so the next step's kernels cannot be queued ahead. None of that needs a GPU
to detect: a TorchFunctionMode sees the calls themselves on a CPU. The test trains the same run for N
and for 2N steps and asserts that the calls it sees do not grow with the number of steps: what happens
once per epoch (the epoch's order, reading the epoch's statistics) is allowed, anything per step is not.
Tensors a task keeps on the host by design (Task.host_keys, e.g. sentence lengths for packing) and
what is computed from them are host work, not waiting.
"""
from __future__ import annotations

import collections
import itertools
import traceback
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from conftest import make_ml100k_zip, tiny_overrides
from regbench import loop
from regbench.validation import validate

HOST_READS = {"item", "tolist", "numpy", "cpu", "cuda", "__bool__", "__float__", "__int__", "__index__"}
DATA_DEPENDENT_SHAPE = {"nonzero", "argwhere", "masked_select", "unique", "unique_consecutive"}
INDEXING = {"__getitem__", "__setitem__", "index_put", "index_put_"}
REGBENCH_SOURCE = str(Path(loop.__file__).parent)
# torch code whose calls look like syncs on a CPU but are none on a GPU: gradient clipping moves the
# clip coefficient to each gradient's own device (a no-op with one device); optimizers read their step
# counts, which torch keeps on the host (unless capturable=True).
NOT_A_SYNC_ON_A_GPU = ("torch/nn/utils/clip_grad.py", "torch/optim/optimizer.py")


def _is_bool_index(index) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype == torch.bool
    if isinstance(index, (tuple, list)):
        return any(_is_bool_index(i) for i in index)
    return False


def _names_a_device(args, kwargs) -> bool:
    return kwargs.get("device") is not None or any(isinstance(a, (torch.device, str)) for a in args)


class HostSyncDetector(TorchFunctionMode):
    """Records (what, where) for every call that would make the host wait for a GPU."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []
        # Tensors on the host by design, and what is computed from them (kept alive so ids stay unique).
        self.on_host: dict[int, torch.Tensor] = {}

    def mark_on_host(self, tensors) -> None:
        self.on_host.update((id(t), t) for t in tensors if isinstance(t, torch.Tensor))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs, _ = tree_flatten((args, kwargs))
        if any(isinstance(t, torch.Tensor) and id(t) in self.on_host for t in inputs):
            result = func(*args, **kwargs)
            self.mark_on_host(tree_flatten(result)[0])
            return result
        name = getattr(func, "__name__", "")
        reason = None
        if self._called_from(NOT_A_SYNC_ON_A_GPU):
            pass
        elif name in HOST_READS:
            reason = f"host read {name}()"
        elif name in DATA_DEPENDENT_SHAPE or (name == "where" and len(args) == 1):
            reason = f"data-dependent shape {name}()"
        elif name in INDEXING and _is_bool_index(args[1:]):
            reason = f"boolean-mask indexing {name}"
        elif name == "to" and _names_a_device(args[1:], kwargs):
            reason = "copy to a device .to(device)"
        elif name in ("tensor", "as_tensor", "new_tensor") and kwargs.get("device") is not None:
            reason = f"host-to-device copy {name}(..., device=)"
        if reason:
            self.calls.append((reason, self._caller()))
        return func(*args, **kwargs)

    @staticmethod
    def _called_from(files: tuple[str, ...]) -> bool:
        caller = next(f for f in reversed(traceback.extract_stack()) if f.filename != __file__)
        return caller.filename.endswith(files)

    @staticmethod
    def _caller() -> str:
        frames = [f for f in traceback.extract_stack()[:-2] if f.filename.startswith(REGBENCH_SOURCE)]
        return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "torch"


def calls_during_epoch(cfg, tmp_path: Path, steps: int, as_on_a_gpu: dict | None = None) -> collections.Counter:
    """The detector's findings for one real `loop.train_epoch` cut to its first `steps` batches.
    `as_on_a_gpu`: task attributes to set as the task sets them on a GPU."""
    validate(cfg)
    task, regimen, model, generator = loop.build(cfg, torch.device("cpu"))
    for key, value in (as_on_a_gpu or {}).items():
        assert hasattr(task, key)
        setattr(task, key, value)
    training = loop.prepare(cfg, task, model, regimen, generator)
    full = task.train_batches
    detector = HostSyncDetector()

    def batches(gen):
        for batch in itertools.islice(full(gen), steps):
            detector.mark_on_host(batch[k] for k in getattr(task, "host_keys", ()))
            yield batch

    task.train_batches = batches
    with detector:
        loop.train_epoch(training, 1)
    return collections.Counter(detector.calls)


def assert_no_per_step_sync(cfg, tmp_path: Path, steps: int, as_on_a_gpu: dict | None = None) -> None:
    once = calls_during_epoch(cfg, tmp_path, steps, as_on_a_gpu)
    twice = calls_during_epoch(cfg, tmp_path, 2 * steps, as_on_a_gpu)
    per_step = twice - once
    assert not per_step, "host-device synchronisation in every training step: " + "; ".join(
        f"{what} at {where} ({n} more with {steps} more steps)" for (what, where), n in per_step.items())


@pytest.fixture(autouse=True)
def no_periodic_checks(monkeypatch):
    """The non-finite loss check reads one value every NONFINITE_CHECK_EVERY steps by design."""
    monkeypatch.setattr(loop, "NONFINITE_CHECK_EVERY", 10**9)


def test_the_detector_sees_what_makes_a_gpu_wait():
    x = torch.arange(6.0)
    with HostSyncDetector() as detector:
        _ = x[x > 2]
        _ = float(x.sum())
        _ = x.to("cpu")
        _ = torch.tensor(1.0, device="cpu")
        _ = x.nonzero()
        _ = torch.full((), 1.0) + x.sum()  # no sync: stays on the device
    assert [what for what, _ in detector.calls] == [
        "boolean-mask indexing __getitem__", "host read __float__()", "copy to a device .to(device)",
        "host-to-device copy tensor(..., device=)", "data-dependent shape nonzero()"]


@pytest.mark.parametrize("regularizer", ["bn_dropout", "bn_dropout_gc", "mixup", "ema",
                                         "label_smoothing regularizer.grad_clip.mode=agc"])
def test_cifar10_steps_never_wait_for_the_host(compose_cfg, tiny_data_dir, tmp_path, regularizer):
    cfg = compose_cfg(*tiny_overrides(tiny_data_dir, tmp_path / "cache", f"regularizer={regularizer}".split()[0],
                                      *regularizer.split()[1:], "augment=full", "trainer.batch_size=8"))
    assert_no_per_step_sync(cfg, tmp_path, 2)


def test_steps_with_a_regularizer_of_the_users_own_never_wait_for_the_host(compose_cfg, tiny_data_dir, tmp_path,
                                                                          monkeypatch):
    """The hook machinery itself adds no host read: two extras (a penalty, an after-step with a state of its
    own) beside the built-in hooks (clipping, L1, EMA)."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples"))
    extra = ("regularizer.extra=[{_target_:my_regularizer.Orthogonality,weight:0.001},"
             "{_target_:my_regularizer.WeightNoise,std:0.001}]")
    cfg = compose_cfg(*tiny_overrides(tiny_data_dir, tmp_path / "cache", "regularizer=bn_dropout_gc", extra,
                                      "penalty.l1=0.0001", "regularizer.ema.decay=0.9", "trainer.batch_size=8"))
    assert_no_per_step_sync(cfg, tmp_path, 2)


@pytest.mark.parametrize("char", ["cnn", "lstm"])
def test_tagging_steps_never_wait_for_the_host(compose_cfg, tiny_corpus_dir, tmp_path, char):
    cfg = compose_cfg("task=conll", f"data.dir={tiny_corpus_dir}", "regularizer=bn_dropout_gc", f"model.char={char}",
                      "model.singleton_unk=0.5", "model.hidden=16", "model.word_dim=16", "model.char_hidden=8",
                      "model.char_dim=8", "trainer.batch_size=8", "trainer.progress=false", "trainer.device=cpu",
                      f"paths.output_dir={tmp_path}")
    assert_no_per_step_sync(cfg, tmp_path, 3)


@pytest.mark.parametrize("negatives,loss", [("uniform", "bpr"), ("in_batch", "softmax")])
def test_movielens_steps_never_wait_for_the_host(compose_cfg, tmp_path, negatives, loss):
    make_ml100k_zip(tmp_path / "ml-100k.zip")
    cfg = compose_cfg("task=movielens", f"data.dir={tmp_path}", "data.download=false", "regularizer=bn_dropout",
                      f"model.negatives={negatives}", f"model.loss={loss}", "trainer.batch_size=16",
                      "trainer.progress=false", "trainer.device=cpu", f"paths.output_dir={tmp_path}")
    assert_no_per_step_sync(cfg, tmp_path, 3, as_on_a_gpu={"stop_sampling_early": False})
    if negatives == "uniform":  # on a CPU, sampling stops early, which reads a flag on the host per step
        with pytest.raises(AssertionError, match=r"host read __bool__\(\) at recommendation.py"):
            assert_no_per_step_sync(cfg, tmp_path, 3)
