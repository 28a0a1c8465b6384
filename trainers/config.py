"""`viewstream train` configuration: one pydantic model, validated before any worker starts.

A YAML file names the dataset, view recipe, method, optimizer and schedules, global batch,
epochs, workers, storage and checkpoint cadence; ``--set a.b=c`` changes any field. Every
check that can fail without a cluster happens here (`TrainConfig.validated`), so a bad config
costs nothing and the error names the field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from pipeline import RECIPES, ViewSpec
from pipeline.spec import MAX_GLOBAL_VIEWS
from groundfloor.storage import local_path
from groundfloor.config_files import load_yaml_config, validate
from trainers.methods import MethodConfig, parse_method_config
from trainers.optim import OptimizerConfig
from groundfloor.errors import UsageError, usage_error_from


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetRoot(_Strict):
    """One root of a multi-root dataset and what it gives per epoch (at most one knob)."""

    root: str
    repeat: Optional[float] = Field(None, ge=0, description="x the root's samples per epoch")
    choose: Optional[int] = Field(None, ge=0, description="samples of this root per epoch")
    proportion: Optional[float] = Field(None, ge=0, description="share of data.epoch_size")

    @model_validator(mode="after")
    def _one_knob(self) -> "DatasetRoot":
        if sum(v is not None for v in (self.repeat, self.choose, self.proportion)) > 1:
            raise ValueError("give at most one of repeat, choose, proportion")
        return self


DatasetSpec = Union[str, list[Union[str, DatasetRoot]]]


def dataset_arg(dataset: DatasetSpec):
    """A config's dataset as `ViewLoader` takes it (plain roots and dicts)."""
    if isinstance(dataset, str):
        return dataset
    return [d if isinstance(d, str) else d.model_dump(exclude_none=True) for d in dataset]


def dataset_roots(dataset: DatasetSpec) -> list[str]:
    """The root folders / s3:// prefixes of a dataset spec."""
    return [dataset] if isinstance(dataset, str) else [d if isinstance(d, str) else d.root for d in dataset]


class DataConfig(_Strict):
    """The training shards and how to make views of them."""

    dataset: DatasetSpec = Field(
        description="dataset folder or s3://bucket/prefix written by `viewstream shard`, or a list "
                    "of them read as one (items: a root or {root, repeat | choose | proportion})")
    epoch_size: Optional[PositiveInt] = Field(None, description="samples per epoch when roots have a proportion")
    verify: Literal["sha256", "none"] = Field("sha256", description="check each drawn photo's sha256")
    streams: Optional[PositiveInt] = Field(
        None, description="shard streams read at once per worker (default: 6 if a root is on S3, else 1)")
    recipe: str = Field("simclr", description=f"view recipe: one of {sorted(RECIPES)}")
    recipe_options: dict[str, Any] = Field(
        default_factory=dict, description="arguments of the recipe (size, global_size, local_size, num_local, ...)"
    )
    natural_views: bool = Field(
        True, description="true: a sample is a natural-view group and its global views are different photos "
        "of it (data.views_per_group); false: every photo is its own sample with two augmented views (single-image SSL on the same data)")
    views_per_group: int = Field(
        2, ge=2, le=MAX_GLOBAL_VIEWS, description="global views per sample: as many different photos of its group "
        "(fewer photos: further augmentations of them, cycled in draw order); above 2 only for methods that use "
        "them all (simclr, moco_v3 with multi_positive: true)")
    num_threads: PositiveInt = Field(1, description="DALI threads per worker")
    prefetch: PositiveInt = 2
    endpoint_url: Optional[str] = Field(
        None, description="S3 endpoint for every URI of the run: datasets, monitor, run.storage "
        "(--endpoint-url overrides it; default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)")

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: str) -> str:
        if value not in RECIPES or value == "eval":
            raise ValueError(f"unknown training recipe {value!r}; expected one of {sorted(set(RECIPES) - {'eval'})}")
        return value

    def view_spec(self) -> ViewSpec:
        """The recipe's views, with `views_per_group` global views (the recipe's, repeated in turn)."""
        spec = ViewSpec.from_recipe(self.recipe, **self.recipe_options)
        return spec if spec.num_global == self.views_per_group else spec.with_global_views(self.views_per_group)


class MonitorConfig(_Strict):
    """Online kNN on a held-out labelled split during training (frozen features, rank 0)."""

    train_dataset: DatasetSpec = Field(description="labelled shards whose features form the kNN memory bank")
    test_dataset: DatasetSpec = Field(description="labelled shards to classify")
    every_epochs: PositiveInt = 1
    k: PositiveInt = 20
    temperature: float = Field(0.07, gt=0)
    image_size: PositiveInt = 32
    crop_fraction: float = Field(1.0, gt=0, le=1)
    batch_size: PositiveInt = 256
    max_train_samples: Optional[PositiveInt] = Field(None, description="memory bank size cap (a seeded subset)")
    max_test_samples: Optional[PositiveInt] = Field(None, description="test samples cap (a seeded subset)")
    budget_s: float = Field(
        1800.0, gt=0, description="wall-clock budget of one probe: it stops embedding when the budget is spent, "
        "and the process-group timeout is raised by it, so ranks waiting for rank 0 cannot time out")


class ScalingSettings(_Strict):
    """How many Ray Train workers and what each gets.

    `num_workers` is a count, or ``[min, max]`` for Ray Train's elastic training: the run
    starts with as many workers as the cluster can place (at least min) and restarts on fewer
    or more after a node is lost or added, continuing from the last checkpoint.
    """

    num_workers: Union[PositiveInt, tuple[PositiveInt, PositiveInt]] = Field(
        2, description="workers, or [min, max] for elastic training (every count must divide batch_size)")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    collective_timeout_s: int = Field(
        1800, gt=0, description="torch.distributed timeout of one collective (the monitor's budget_s is added)")
    wait_for_resources_s: float = Field(
        900.0, ge=0, description="how long to wait for an autoscaling cluster to grow to the request")

    @field_validator("num_workers")
    @classmethod
    def _ordered(cls, value):
        if isinstance(value, tuple) and value[0] > value[1]:
            raise ValueError(f"[min, max] = {list(value)}: expected min <= max")
        return value

    @property
    def elastic(self) -> bool:
        """True when `num_workers` is a [min, max] range."""
        return isinstance(self.num_workers, tuple)

    @property
    def min_workers(self) -> int:
        return self.num_workers[0] if isinstance(self.num_workers, tuple) else self.num_workers

    @property
    def max_workers(self) -> int:
        return self.num_workers[1] if isinstance(self.num_workers, tuple) else self.num_workers

    def worker_counts(self) -> list[int]:
        """Every worker count the run may have."""
        return list(range(self.min_workers, self.max_workers + 1))


class FaultDrill(_Strict):
    """Recovery drill: worker `rank` fails once at `step` (raise, or SIGKILL itself).

    `marker` is a file created when the fault fires, so the restarted attempt runs clean.
    """

    step: PositiveInt
    rank: int = Field(0, ge=0)
    kind: Literal["raise", "sigkill"] = "raise"
    marker: str


class RunSettings(_Strict):
    """Where the run lives and how it survives failures."""

    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$")
    storage: str = Field("runs", description="folder or s3://bucket/prefix for checkpoints")
    out_dir: Optional[str] = Field(None, description="local folder for metrics, TensorBoard, plots (default: runs/<name>)")
    checkpoint_every_steps: PositiveInt = 100
    keep_checkpoints: PositiveInt = 2
    max_failures: int = Field(0, ge=-1, description="restarts from the latest checkpoint; -1 = unlimited")
    log_every_steps: PositiveInt = 10
    address: Optional[str] = Field(None, description="Ray cluster address; None starts a local Ray on 127.0.0.1")
    fault: Union[FaultDrill, list[FaultDrill], None] = Field(
        None, description="recovery drill, or a list of drills that each fire once (one run, several failures)")

    def fault_drills(self) -> list[FaultDrill]:
        """The configured drills as a list (none, one, or several)."""
        if self.fault is None:
            return []
        return self.fault if isinstance(self.fault, list) else [self.fault]

    def output_dir(self) -> Path:
        if self.out_dir:
            return Path(self.out_dir)
        local = local_path(self.storage)
        if local is not None:
            return Path(local) / self.name
        return Path("runs") / self.name


class TrainConfig(_Strict):
    """Everything `viewstream train` needs (see configs/ for examples)."""

    seed: int = 0
    data: DataConfig
    method: dict[str, Any] = Field(description="method config: name plus that method's fields")
    optimizer: OptimizerConfig = OptimizerConfig()
    batch_size: PositiveInt = Field(256, description="global batch over all workers")
    epochs: PositiveInt = 10
    max_steps: Optional[PositiveInt] = Field(None, description="stop after this many steps (before `epochs` ends)")
    grad_clip: Optional[float] = Field(None, gt=0)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="autocast dtype; auto: bf16 on GPUs that have it, fp16 (+GradScaler) on older GPUs, "
        "fp32 on CPU. fp16 costs one host sync per step (the GradScaler's inf check)")
    gradient_accumulation_steps: PositiveInt = Field(
        1, description="micro-batches per optimizer step (each rank's batch is split); exact for per-sample "
        "losses without BatchNorm. BN and contrastive losses see micro-batches: statistics and negatives shrink")
    channels_last: Literal["auto", "on", "off"] = Field("auto", description="NHWC memory format; auto: on for conv nets (CPU and CUDA)")
    compile: bool = Field(False, description="torch.compile the backbone (in place: checkpoint keys unchanged)")
    tf32: bool = Field(True, description="CUDA: TF32 for fp32 matmuls and cuDNN convolutions (no effect on CPU)")
    cudnn_benchmark: Literal["auto", "on", "off"] = Field(
        "auto", description="CUDA: cuDNN autotuning; auto: on for conv nets (fixed shapes per view size)")
    nonfinite_loss: Literal["stop", "skip"] = Field(
        "stop", description="stop: the run fails at the next log/checkpoint step after a NaN/inf loss, before any "
        "non-finite checkpoint is written (no per-step host sync); skip: every step checks and skips the update "
        "(one host sync per step)")
    scaling: ScalingSettings = ScalingSettings()
    run: RunSettings = RunSettings()
    monitor: Optional[MonitorConfig] = None

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        # Each worker takes batch_size / W samples of every global batch (pipeline.epochs): the
        # global batches, LR schedule and steps are then the same for every W the run may have.
        s, k = self.scaling, self.gradient_accumulation_steps
        if not s.elastic and self.batch_size % s.num_workers:
            raise ValueError(
                f"batch_size={self.batch_size} is not divisible by scaling.num_workers={s.num_workers}")
        if not s.elastic and self.per_worker_batch() % k:
            raise ValueError(
                f"gradient_accumulation_steps={k} does not divide the per-worker "
                f"batch {self.per_worker_batch()} (batch_size / scaling.num_workers)")
        bad = [w for w in s.worker_counts() if self.batch_size % w or (self.batch_size // w) % k]
        if bad:
            good = [w for w in range(1, s.max_workers + 1) if not self.batch_size % w and not (self.batch_size // w) % k]
            accumulation = f" into micro-batches of gradient_accumulation_steps={k}" if k > 1 else ""
            raise ValueError(
                f"scaling.num_workers={list(s.num_workers)}: batch_size={self.batch_size} does not split evenly"
                f"{accumulation} over {', '.join(map(str, bad))} workers; counts up to {s.max_workers} that work: "
                f"{', '.join(map(str, good))}")
        return self

    def collective_timeout_s(self) -> int:
        """The process-group timeout: one collective's, plus the online probe's budget."""
        budget = self.monitor.budget_s if self.monitor else 0.0
        return int(self.scaling.collective_timeout_s + budget)

    # ---- derived, validated pieces --------------------------------------------------------
    def view_spec(self) -> ViewSpec:
        try:
            return self.data.view_spec()
        except ValidationError as err:
            raise usage_error_from(err, "config", prefix="data.recipe_options.") from None
        except (TypeError, ValueError) as err:
            raise UsageError(f"data.recipe_options: {err}".splitlines()[0]) from None

    def method_config(self) -> MethodConfig:
        """The method's own validated config, with view counts and batch taken from here."""
        spec = self.view_spec()
        data = dict(self.method)
        requested_local = data.get("num_local_views")
        if requested_local is not None and requested_local != spec.num_local:
            raise UsageError(
                f"method.num_local_views={requested_local} but data.recipe {self.data.recipe!r} makes "
                f"{spec.num_local} local views"
            )
        data["num_local_views"] = spec.num_local
        data.setdefault("global_batch_size", self.batch_size)
        requested_global = data.get("num_global_views")
        if requested_global is not None and requested_global != spec.num_global:
            raise UsageError(f"method.num_global_views={requested_global} but data.views_per_group is {spec.num_global}")
        config = parse_method_config({**data, "num_global_views": 2}, where="method.")
        if spec.num_global > config.max_global_views():
            raise UsageError(
                f"data.views_per_group={spec.num_global}: method {config.name!r} uses {config.max_global_views()} "
                "global views per sample; more need byol, simsiam, dino, or simclr / moco_v3 with method.multi_positive: true")
        if spec.num_global != 2:
            config = parse_method_config({**data, "num_global_views": spec.num_global}, where="method.")
        config.check_view_sizes([v.size for v in spec.views if v.kind == "global"])
        return config

    def per_worker_batch(self, world_size: Optional[int] = None) -> int:
        """Samples per worker per step: batch_size / the run's actual number of workers
        (`world_size`; may be left out only when `scaling.num_workers` is a fixed count)."""
        if world_size is None:
            if self.scaling.elastic:
                raise ValueError("scaling.num_workers is a [min, max] range: give the actual world size")
            world_size = self.scaling.num_workers
        return self.batch_size // world_size

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "TrainConfig":
        """Read, override and validate a config; UsageError (one line) if anything is off."""
        config = validate(cls, load_yaml_config(path, overrides))
        config.method_config()  # method fields, view counts, queue sizes: fail now, not on a worker
        return config
