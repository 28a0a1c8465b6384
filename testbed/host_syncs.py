"""Count the calls that make the host wait for the device, on any device.

On a GPU, `torch.cuda.set_sync_debug_mode` reports syncs inside torch's kernels; on the CPU there
is no device to wait for, so CI counts the Python-level calls that WOULD sync on a GPU: reading a
value (`item`, `tolist`, `numpy`, `cpu`, `float()`/`int()`/`bool()` of a tensor), data-dependent
shapes (`nonzero`, `masked_select`, boolean-mask indexing) and `torch.cuda.synchronize`. The same
training code runs on both devices, so a count of 0 here is the CUDA step's count too, save for
syncs inside torch's own C++ (which the GPU check's debug mode sees: `counting_cuda_syncs`).
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Iterator

import torch

SYNC_METHODS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "nonzero", "masked_select")


def _is_mask(index) -> bool:
    if isinstance(index, torch.Tensor):
        return index.dtype == torch.bool
    if isinstance(index, tuple):
        return any(_is_mask(i) for i in index)
    return False


@contextlib.contextmanager
def counting_host_syncs(counter: list[int]) -> Iterator[None]:
    """Add 1 to counter[0] for every host-sync call made while active (see the module docstring)."""
    originals = [(torch.Tensor, name, getattr(torch.Tensor, name)) for name in SYNC_METHODS]
    originals += [(torch, "nonzero", torch.nonzero), (torch, "masked_select", torch.masked_select),
                  (torch.cuda, "synchronize", torch.cuda.synchronize)]
    getitem = torch.Tensor.__getitem__

    def counted(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            counter[0] += 1
            return fn(*args, **kwargs)
        return wrapper

    def counted_getitem(self, index):
        if _is_mask(index):
            counter[0] += 1
        return getitem(self, index)

    for owner, name, fn in originals:
        setattr(owner, name, counted(fn))
    torch.Tensor.__getitem__ = counted_getitem
    try:
        yield
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
        torch.Tensor.__getitem__ = getitem


# The text of c10::cuda::warn_or_error_on_sync's TORCH_WARN (in libc10_cuda.so; called from
# c10/cuda/CUDAFunctions.h memcpy_and_sync and stream_synchronize when the mode is not default).
CUDA_SYNC_WARNING = "called a synchronizing CUDA operation"


@contextlib.contextmanager
def counting_cuda_syncs(counter: list[int]) -> Iterator[None]:
    """Add to counter[0] the syncs torch's CUDA sync debug mode reports while active.

    `torch.cuda.set_sync_debug_mode("warn")` (torch/cuda/__init__.py) makes every host wait
    inside torch's kernels a C++ TORCH_WARN; called from Python it becomes a Python warning
    (torch/csrc/Exceptions.h: HANDLE_TH_ERRORS installs a PyWarningHandler), and one raised on
    an autograd device thread is replayed on the thread that called backward
    (torch/csrc/autograd/graph_task.h: GraphTask::warning_handler_, a DelayWarningHandler,
    torch/csrc/autograd/utils/warnings.h). Not seen: syncs in torch.distributed (the debug
    mode's docstring says so) and in threads torch starts itself (gloo's workers: their
    warnings go to stderr). GPU only.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every occurrence, not once per call site
        torch.cuda.set_sync_debug_mode("warn")  # torch/cuda/__init__.py set_sync_debug_mode: 1 = warn
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    counter[0] += sum(CUDA_SYNC_WARNING in str(w.message) for w in caught)


def counting_syncs(device: str, counter: list[int]):
    """The counter for `device`: torch's debug mode on CUDA, the Python-level one elsewhere."""
    return counting_cuda_syncs(counter) if torch.device(device).type == "cuda" else counting_host_syncs(counter)
