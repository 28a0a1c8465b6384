"""What views to make: `ViewSpec` (crops, sizes, per-view augmentation) and its paper recipes.

A spec is plain pydantic data so that a training config can carry it and `--set` can change it.
The recipes follow the papers' defaults; every size is a parameter so tests and demos can use
28-64 px images. A registry (`RECIPES`) maps recipe names to constructors: no if-chains.
"""
from __future__ import annotations

from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from groundfloor.errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_GLOBAL_VIEWS = 32  # photo picks per sample: `pipeline.params` draws them from one counter row


class Augmentation(BaseModel):
    """The random augmentation of one view (SimCLR's list, with per-view probabilities).

    Crops follow torchvision's RandomResizedCrop (area `scale`, aspect `ratio`); colour jitter
    uses ColorJitter's strengths (factors drawn in [1-s, 1+s], hue in [-h, h] of a full turn);
    blur sigma is drawn in `blur_sigma` and its window is derived from sigma (radius 3 sigma),
    capped at 10% of the output size as in SimCLR. `center_crop` replaces the random crop by
    the deterministic resize + center crop used for evaluation (fraction `crop_fraction`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = Field(0.5, ge=0, le=1)
    jitter_p: float = Field(0.8, ge=0, le=1)
    brightness: float = Field(0.4, ge=0, le=1)
    contrast: float = Field(0.4, ge=0, le=1)
    saturation: float = Field(0.4, ge=0, le=1)
    hue: float = Field(0.1, ge=0, le=0.5)
    grayscale_p: float = Field(0.2, ge=0, le=1)
    blur_p: float = Field(0.5, ge=0, le=1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = Field(0.0, ge=0, le=1)
    center_crop: bool = False
    crop_fraction: float = Field(0.875, gt=0, le=1)

    @model_validator(mode="after")
    def _ranges(self) -> "Augmentation":
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale {self.scale} must satisfy 0 < low <= high <= 1")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio {self.ratio} must satisfy 0 < low <= high")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma {self.blur_sigma} must satisfy 0 < low <= high")
        return self


class ViewConfig(BaseModel):
    """One output view: its square size, whether it is a global or local crop, its augmentation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=8, le=1024)
    kind: Literal["global", "local"] = "global"
    augment: Augmentation = Augmentation()


class ViewSpec(BaseModel):
    """How many views of which size and augmentation the pipeline makes per sample.

    Global views come first. Each global view shows a different photo of the group while the
    group has enough (`pipeline.params.draw_batch`; the first two are the natural pair); local
    views crop the first or second global view's photo.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    views: list[ViewConfig] = Field(min_length=1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    recipe: str = "custom"

    @model_validator(mode="after")
    def _globals_first(self) -> "ViewSpec":
        kinds = [v.kind for v in self.views]
        if "global" not in kinds:
            raise ValueError("a ViewSpec needs at least one global view")
        if kinds != sorted(kinds):  # "global" < "local"
            raise ValueError(f"global views must come before local views, got {kinds}")
        if kinds.count("global") > MAX_GLOBAL_VIEWS:
            raise ValueError(f"at most {MAX_GLOBAL_VIEWS} global views, got {kinds.count('global')}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std {self.std} must be positive")
        return self

    @property
    def num_global(self) -> int:
        return sum(v.kind == "global" for v in self.views)

    @property
    def num_local(self) -> int:
        return sum(v.kind == "local" for v in self.views)

    def with_global_views(self, count: int) -> "ViewSpec":
        """This spec with `count` global views: its global views repeated in turn (an asymmetric
        recipe's third view is augmented like its first), local views unchanged."""
        globals_ = [v for v in self.views if v.kind == "global"]
        if not 1 <= count <= MAX_GLOBAL_VIEWS:
            raise ValueError(f"{count} global views: expected 1 to {MAX_GLOBAL_VIEWS}")
        views = [globals_[i % len(globals_)] for i in range(count)] + [v for v in self.views if v.kind == "local"]
        return self.model_copy(update={"views": views})

    # ---- recipes ---------------------------------------------------------------------------
    @classmethod
    def simclr(cls, size: int = 224, color_jitter_strength: float | None = None, **augment) -> "ViewSpec":
        """SimCLR (Chen et al. 2020): two identical random views, blur p 0.5, no solarize.

        The defaults are MoCo v2's / SimSiam's jitter (0.4, 0.4, 0.4, 0.1). `color_jitter_strength`
        s gives SimCLR's (0.8s, 0.8s, 0.8s, 0.2s) (google-research/simclr tf2/data_util.py 53-69
        `color_jitter`; the ImageNet recipe uses s = 1.0).
        """
        if color_jitter_strength is not None:
            s = color_jitter_strength
            augment = dict(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s) | augment
        aug = Augmentation(**augment)
        return cls(views=[ViewConfig(size=size, augment=aug)] * 2, recipe="simclr")

    @classmethod
    def byol(cls, size: int = 224, **augment) -> "ViewSpec":
        """BYOL (Grill et al. 2020): asymmetric views, blur p 1.0 / 0.1, solarize p 0 / 0.2."""
        base = dict(saturation=0.2) | augment
        one = Augmentation(**(base | dict(blur_p=1.0, solarize_p=0.0)))
        two = Augmentation(**(base | dict(blur_p=0.1, solarize_p=0.2)))
        return cls(views=[ViewConfig(size=size, augment=one), ViewConfig(size=size, augment=two)],
                   recipe="byol")

    @classmethod
    def multicrop(cls, global_size: int = 224, local_size: int = 96, num_local: int = 6,
                  global_scale: tuple[float, float] = (0.14, 1.0),
                  local_scale: tuple[float, float] = (0.05, 0.14), style: Literal["dino", "swav"] = "dino",
                  **augment) -> "ViewSpec":
        """SwAV/DINO multi-crop: 2 global crops + `num_local` small local crops.

        style "dino" (facebookresearch/dino main_dino.py `DataAugmentationDINO`): jitter
        (0.4, 0.4, 0.2, 0.1); global 1 blur p 1.0; global 2 blur p 0.1 and solarize 0.2; local
        crops blur p 0.5. style "swav" (facebookresearch/swav src/multicropdataset.py lines 37-52,
        88-94): every crop the same, jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2, blur p 0.5,
        no solarize. Explicit `augment` arguments override the shared values of either style
        (and, for "swav", blur/solarize too); "dino"'s per-crop blur and solarize stay as listed.
        """
        if num_local < 0:
            raise UsageError(f"num_local={num_local}: expected an integer >= 0")
        if style == "swav":
            base = dict(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_p=0.5, solarize_p=0.0) | augment
            g1 = g2 = Augmentation(**(base | dict(scale=global_scale)))
            loc = Augmentation(**(base | dict(scale=local_scale)))
        else:
            base = dict(saturation=0.2) | augment
            g1 = Augmentation(**(base | dict(scale=global_scale, blur_p=1.0, solarize_p=0.0)))
            g2 = Augmentation(**(base | dict(scale=global_scale, blur_p=0.1, solarize_p=0.2)))
            loc = Augmentation(**(base | dict(scale=local_scale, blur_p=0.5, solarize_p=0.0)))
        views = [ViewConfig(size=global_size, augment=g1), ViewConfig(size=global_size, augment=g2)]
        views += [ViewConfig(size=local_size, kind="local", augment=loc)] * num_local
        return cls(views=views, recipe="multicrop")

    @classmethod
    def eval(cls, size: int = 224, crop_fraction: float = 0.875) -> "ViewSpec":
        """Evaluation/embedding: resize + center crop + normalize, one view, no randomness."""
        aug = Augmentation(flip_p=0, jitter_p=0, grayscale_p=0, blur_p=0, solarize_p=0,
                           center_crop=True, crop_fraction=crop_fraction)
        return cls(views=[ViewConfig(size=size, augment=aug)], recipe="eval")

    @classmethod
    def from_recipe(cls, name: str, **kwargs) -> "ViewSpec":
        """The recipe called `name` (see RECIPES) with its keyword arguments (sizes, strengths)."""
        try:
            make = RECIPES[name]
        except KeyError:
            raise UsageError(f"unknown view recipe {name!r}; expected one of {sorted(RECIPES)}") from None
        return make(**kwargs)


RECIPES: dict[str, Callable[..., ViewSpec]] = {
    "simclr": ViewSpec.simclr,
    "byol": ViewSpec.byol,
    "multicrop": ViewSpec.multicrop,
    "eval": ViewSpec.eval,
}
