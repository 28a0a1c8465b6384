"""FAISS on the GPUs of this process: one `StandardGpuResources` per GPU, made once and reused,
and index shards spread over the GPUs instead of copied to each.

faiss's own `index_cpu_to_all_gpus` makes a fresh `StandardGpuResources` for every GPU on every
call (faiss/python/gpu_wrappers.py, `index_cpu_to_gpus_list`: ``res = [StandardGpuResources()
for _ in gpus]``), each reserving temporary memory (faiss/gpu/StandardGpuResources.cpp,
`getDefaultTempMemForGPU`: up to `kMaxTempMem` = 1536 MiB per GPU), and replicates the whole
index on every GPU. Here shard i of an index goes to GPU i mod n (`index_cpu_to_gpu`, one resources
object per device); when an index has fewer shards than there are GPUs, each shard is split
over its GPUs with `GpuMultipleClonerOptions.shard = True` (faiss/gpu/GpuClonerOptions.h:
"Whether to shard the index across GPUs, versus replication across GPUs") through `index_cpu_to_gpu_multiple_py`.
faiss-cpu has none of these entry points; `gpu_available` says so and callers stay on the CPU.
"""
from __future__ import annotations

import threading
from typing import Sequence

import faiss

_resources: dict[int, object] = {}
_lock = threading.Lock()


def gpu_available() -> bool:
    """Whether this faiss has GPU support and sees a GPU (faiss-cpu: never)."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def gpu_resources(device: int):
    """This process's one `StandardGpuResources` for `device` (made on first use)."""
    with _lock:
        if device not in _resources:
            _resources[device] = faiss.StandardGpuResources()
        return _resources[device]


def devices_of(shard: int, num_shards: int, num_gpus: int) -> list[int]:
    """The GPUs that hold shard `shard`: round-robin, every GPU used, every shard on >= 1 GPU."""
    if num_shards >= num_gpus:
        return [shard % num_gpus]
    return [g for g in range(num_gpus) if g % num_shards == shard]


def shards_to_gpus(shards: Sequence, num_gpus: int | None = None) -> list:
    """GPU copies of CPU index `shards`, spread over the visible GPUs (see the module docstring)."""
    num_gpus = num_gpus or faiss.get_num_gpus()
    out = []
    for i, shard in enumerate(shards):
        devices = devices_of(i, len(shards), num_gpus)
        if len(devices) == 1:
            out.append(faiss.index_cpu_to_gpu(gpu_resources(devices[0]), devices[0], shard, faiss.GpuClonerOptions()))
            continue
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True
        out.append(faiss.index_cpu_to_gpu_multiple_py([gpu_resources(d) for d in devices], shard, options, devices))
    return out


def flat_index_on_gpus(dim: int):
    """An inner-product flat index over every GPU (k-means assignment while training an IVF)."""
    return shards_to_gpus([faiss.IndexFlatIP(dim)])[0]
