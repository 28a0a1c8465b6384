"""Training checkpoints: everything a resumed run needs to be the same run.

A checkpoint is a directory with two files:

- ``state.pt``: one entry per stateful part of the Trainer (method state incl. queues, centers,
  EMA weights; optimizer state; fp16's loss scale; every rank's CPU and CUDA RNG states; data
  position and the worker count it was written at), tensors and plain containers only,
  written with ``torch.save`` and read back with ``weights_only=True`` so that loading a
  checkpoint never runs pickled code;
- ``meta.json``: the validated training config and the progress (step, epoch, batch), readable
  without torch, so tools can tell what a checkpoint is before loading it.

:class:`CheckpointManager` saves and restores a dict of :class:`Stateful` parts by iterating over
it: adding state is adding a part, never an edit of save or restore. The keys of that dict are
the entries of ``state.pt``, so keeping a key keeps old checkpoints resumable.

Checkpoints live wherever Ray Train persists them (any `groundfloor.storage` URI); ``resolve_checkpoint``
turns a run folder, a checkpoint folder or a remote URI into a local checkpoint folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Protocol

import torch

from groundfloor.storage import Storage, join
from groundfloor.errors import UsageError

STATE_FILE = "state.pt"
META_FILE = "meta.json"


@dataclass(frozen=True)
class Progress:
    """Where training stands: `step` optimizer steps done (global batches: the LR schedule's
    clock); the next global batch is (`epoch`, `batch`); `world_size`: the workers that wrote it
    (None in checkpoints from before it was recorded). A run may resume on another count."""

    step: int
    epoch: int
    batch: int
    world_size: Optional[int] = None

    def as_dict(self) -> dict[str, int]:
        """The checkpoint's ``progress`` entry (in state.pt and meta.json)."""
        out = {"step": self.step, "epoch": self.epoch, "batch": self.batch}
        return out if self.world_size is None else {**out, "world_size": self.world_size}


class Stateful(Protocol):
    """A part of the training state, as torch modules and optimizers already are.

    A part whose state differs per rank may also define ``gather_state()``: a collective that
    every rank calls (through `CheckpointManager.gather`) before rank 0 saves.
    """

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


def local_rng_state() -> dict[str, torch.Tensor]:
    """This process's torch generators: the CPU one and, when CUDA is present, every visible
    device's (drop-path, dropout and masks drawn on a GPU use the CUDA generator)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack([s.to(torch.uint8) for s in torch.cuda.get_rng_state_all()])
    return state


def set_local_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Put back what `local_rng_state` collected (CUDA states only where CUDA is present).
    Copies: torch's setters read a row of a stacked tensor from its storage's start."""
    torch.set_rng_state(state["cpu"].clone())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.clone() for s in state["cuda"]])


class TorchRNG:
    """Every rank's torch generators as one stateful part (state.pt's ``torch_rng``).

    State: ``{"cpu": uint8 [W, n]}`` plus ``"cuda": uint8 [W, devices, m]`` when CUDA is present,
    row r being rank r's. `gather_state` (a collective, at checkpoint steps) collects the rows;
    without it (one process) the state is this rank's alone. Restore gives rank r its own row;
    a rank the checkpoint has no row for (the run resumed on more workers) is seeded from
    (rank 0's saved CPU state, its rank): deterministic, and different from every other rank.
    The other draws of a step (crops, masks, CPC's patch augmentation, fills) are pure
    functions of (seed, epoch, sample) or (seed, step), so these generators are all there is.
    Checkpoints from before (a bare CPU state tensor) restore the CPU generator as they did.
    """

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank
        self._gathered: Optional[dict[str, torch.Tensor]] = None

    def gather_state(self) -> None:
        from trainers.distributed import gather_host_bytes

        mine = local_rng_state()
        self._gathered = {name: torch.stack([t.view(mine[name].shape) for t in
                                             gather_host_bytes(mine[name].reshape(-1).to(torch.uint8))])
                          for name in sorted(mine)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        state, self._gathered = self._gathered, None  # a gather serves the one save after it
        if state is None:
            state = {name: t.unsqueeze(0) for name, t in local_rng_state().items()}
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor] | torch.Tensor) -> None:
        if isinstance(state, torch.Tensor):  # a checkpoint with rank 0's CPU state only
            torch.set_rng_state(state)
            return
        if self.rank < len(state["cpu"]):
            set_local_rng_state({name: rows[self.rank] for name, rows in state.items()})
            return
        digest = hashlib.blake2b(state["cpu"][0].numpy().tobytes() + self.rank.to_bytes(8, "little"),
                                 digest_size=8).digest()
        torch.manual_seed(int.from_bytes(digest, "little") >> 1)  # CPU and every CUDA device


class GradScalerState:
    """The fp16 loss scale as a stateful part (state.pt's ``grad_scaler``).

    Without it a resumed fp16 run restarts at the initial scale (65536) and its first steps
    overflow and are skipped until the scale has backed off again: not the same run. The state
    of a disabled scaler (bf16, fp32) is ``{}``; restoring ``{}`` leaves the scaler as built, so
    a checkpoint written without fp16 resumes on a GPU that needs it (and the reverse).
    ``GradScaler.state_dict`` reads the scale to the host: once per checkpoint, not per step.
    """

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        self.scaler = scaler

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.scaler.load_state_dict(state)


class CheckpointManager:
    """Saves and restores `states`, a dict of stateful parts, one ``state.pt`` entry per key.

    A ``progress`` part is required: its state (step, epoch, batch) also goes to meta.json.
    Restore loads every part in the dict's order; a part the checkpoint lacks is a UsageError,
    except the parts named in `optional` (added after checkpoints that lack them were written:
    those keep the state they were built with).
    """

    def __init__(self, states: dict[str, Stateful], optional: frozenset[str] = frozenset()) -> None:
        if "progress" not in states:
            raise ValueError(f"a checkpoint needs a 'progress' part; got {sorted(states)}")
        self.states = states
        self.optional = optional

    def gather(self) -> None:
        """Collective: every rank calls it before rank 0 saves, so parts with per-rank state
        (`gather_state`) hand rank 0 every rank's."""
        for part in self.states.values():
            gather_state = getattr(part, "gather_state", None)
            if gather_state is not None:
                gather_state()

    def save(self, directory: str | os.PathLike, config: dict[str, Any]) -> Path:
        """Write every part's state (and `config`, to meta.json) into `directory`."""
        return save_checkpoint(directory, {name: part.state_dict() for name, part in self.states.items()},
                               config=config)

    def restore(self, directory: str | os.PathLike) -> None:
        """Load every part from the checkpoint in `directory`."""
        state = load_state(directory)
        missing = [name for name in self.states if name not in state and name not in self.optional]
        if missing:
            raise UsageError(f"checkpoint {str(directory)!r} has no {', '.join(missing)} state "
                             f"(it holds {', '.join(sorted(state))})")
        for name, part in self.states.items():
            if name in state:
                part.load_state_dict(state[name])


def save_checkpoint(directory: str | os.PathLike, state: Mapping[str, Any], *, config: dict[str, Any]) -> Path:
    """Write `state` (tensors and containers, with a ``progress`` entry) and `config` into
    `directory` (created if missing) and return its path."""
    if "progress" not in state:
        raise ValueError(f"a checkpoint needs a 'progress' entry; got {sorted(state)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (STATE_FILE + ".tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, directory / STATE_FILE)
    meta = {"progress": state["progress"], "config": config, "format": 1}
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory


def load_state(directory: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint's state safely (weights_only: tensors and containers, no code)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise UsageError(f"{directory} is not a viewstream checkpoint (no {STATE_FILE})")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint's meta.json (config and progress) without torch."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise UsageError(f"{directory} is not a viewstream checkpoint (no {META_FILE})")
    return json.loads(path.read_text())


def progress_of(state: dict[str, Any]) -> Progress:
    """The progress entry of a loaded state.pt."""
    p = state["progress"]
    workers = p.get("world_size")
    return Progress(step=int(p["step"]), epoch=int(p["epoch"]), batch=int(p["batch"]),
                    world_size=None if workers is None else int(workers))


def latest_checkpoint_dir(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder below a local run folder, by training step.

    A partial copy (a worker killed while persisting) is passed over for the one before it.
    """
    candidates = sorted(
        (int(json.loads(m.read_text())["progress"]["step"]), m.parent)
        for m in run_dir.rglob(META_FILE)
        if (m.parent / STATE_FILE).is_file()
    )
    for step, directory in reversed(candidates):
        if _valid_step(directory) == step:
            return directory
    return None


def _valid_step(directory: Path) -> int | None:
    """The step of a complete checkpoint folder, or None if it is partial or unreadable."""
    try:
        meta_step = int(load_meta(directory)["progress"]["step"])
        state_step = progress_of(load_state(directory)).step
    except Exception:  # a partial copy of a checkpoint: not one to resume from
        return None
    return meta_step if meta_step == state_step else None


def find_latest_checkpoint(storage: str, run_name: str, endpoint_url: str | None = None) -> Path | None:
    """The newest complete checkpoint of run `run_name` under `storage` (folder or URI), local.

    The run's storage is the source of truth: every checkpoint Ray Train persisted is there,
    including one whose report the controller had not yet processed when a worker died.
    """
    store = Storage(endpoint_url)
    local = store.local_path(storage)
    if local is None:
        return _latest_remote_checkpoint(store, join(storage, run_name))
    run_dir = Path(local) / run_name
    return latest_checkpoint_dir(run_dir) if run_dir.is_dir() else None


def _latest_remote_checkpoint(store: Storage, run_uri: str) -> Path | None:
    """Download the newest complete checkpoint under `run_uri` (only meta.json files are read
    until one is chosen)."""
    steps = []
    for entry in store.iter_files(run_uri):
        if entry.relpath == META_FILE or entry.relpath.endswith("/" + META_FILE):
            step = int(json.loads(store.read_bytes(entry.uri))["progress"]["step"])
            steps.append((step, entry.uri[: -len(META_FILE) - 1]))
    for step, directory in sorted(steps, reverse=True):
        local = Path(tempfile.mkdtemp(prefix="viewstream-ckpt-"))
        _download(store, directory, local)
        if _valid_step(local) == step:
            return local
    return None


def resolve_checkpoint(path: str, endpoint_url: str | None = None) -> Path:
    """A local checkpoint folder for `path`: a checkpoint folder, a run folder, or a remote URI.

    For a run folder, the checkpoint with the most steps is taken. Remote checkpoints are
    downloaded to a temporary folder.
    """
    store = Storage(endpoint_url)
    if store.local_path(path) is None:
        found = _latest_remote_checkpoint(store, path.rstrip("/"))
        if found is None:
            raise UsageError(f"no complete viewstream checkpoint under {path!r}")
        return found
    p = Path(store.local_path(path))
    if not p.exists():
        raise UsageError(f"checkpoint path {path!r} does not exist")
    if (p / STATE_FILE).is_file():
        return p
    found = latest_checkpoint_dir(p) if p.is_dir() else None
    if found is None:
        raise UsageError(f"no viewstream checkpoint (folder with {STATE_FILE} and {META_FILE}) under {path!r}")
    return found


def _download(store: Storage, uri: str, local: Path) -> None:
    found = False
    for entry in store.iter_files(uri):
        found = True
        target = local / entry.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        with store.open_read(entry.uri) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    if not found:
        raise UsageError(f"nothing stored under {uri!r}")


def load_method(path: str, endpoint_url: str | None = None):
    """The trained method of a checkpoint (or the newest one of a run), in eval mode, and its meta.

    The method is rebuilt from the config stored with the checkpoint, so only the path is needed.
    """
    from trainers.config import TrainConfig
    from trainers.methods import build_method

    directory = resolve_checkpoint(path, endpoint_url)
    meta = load_meta(directory)
    config = TrainConfig.model_validate(meta["config"])
    method = build_method(config.method_config(), seed=config.seed)
    missing, unexpected = method.load_state_dict(load_state(directory)["method"], strict=False)
    if missing or unexpected:
        raise UsageError(
            f"checkpoint {str(directory)!r} does not match method {config.method['name']!r}: "
            f"{len(missing)} missing and {len(unexpected)} unexpected tensors"
        )
    return method.eval(), meta


def load_backbone(path: str, endpoint_url: str | None = None, embedding: str = "backbone"):
    """(model to evaluate or export, meta) of a checkpoint: its backbone (DINO: the teacher's),
    or with `embedding="projection"` the backbone then the projection head (Method.embedding_model)."""
    method, meta = load_method(path, endpoint_url)
    return evaluation_model(method, embedding), meta


def evaluation_model(method, embedding: str = "backbone") -> torch.nn.Module:
    """`method.embedding_model(embedding)` in eval mode, laid out as the Trainer trains it
    (channels_last for conv nets, `wants_channels_last`; `evaluation.features` then feeds NHWC).
    The method's own modules are converted in place."""
    from trainers.backbones.base import wants_channels_last

    model = method.embedding_model(embedding).eval()
    if wants_channels_last(method.backbone):
        model = model.to(memory_format=torch.channels_last)
    return model
