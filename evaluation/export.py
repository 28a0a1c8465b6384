"""Export a trained backbone as a plain library model's state_dict in safetensors.

Users should not need viewstream to use what it trained. The export is the backbone's weights
under the library model's own parameter names (torchvision's ResNet, timm's VisionTransformer,
SwinTransformer or any timm model built by name, or a plain ``torch.nn.Sequential``), plus a few lines of Python that build that library model
with the right shape (classifier replaced by Identity so it returns features; a small-image
stem or a width multiplier applied where the backbone has one). The lines are generated from
the module itself, stored in the file's metadata and a JSON sidecar, and *executed at export
time*: the export is only written if the rebuilt model loads the weights with strict=True and
returns the same features.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models import resnet as tv_resnet

from groundfloor.errors import UsageError

EXPORT_FORMAT = "viewstream-export/1"
METADATA_KEY = "viewstream_export"


@dataclass
class ExportRecipe:
    """How a backbone maps onto a library model: weights by library names, and code to rebuild it."""

    library: str                      # "torchvision" | "timm" | "torch"
    architecture: str                 # e.g. "resnet18", "vit_tiny_patch16_224"
    state_dict: dict[str, torch.Tensor]
    build_code: str                   # Python defining `model` with torch + the library only
    image_size: int                   # an input size the model accepts (used to verify the export)
    notes: list[str] = field(default_factory=list)


def _inner_module(backbone: nn.Module) -> tuple[nn.Module, str]:
    """The library model inside a viewstream backbone wrapper (its `net`), and the key prefix."""
    net = getattr(backbone, "net", None)
    return (net, "net.") if isinstance(net, nn.Module) else (backbone, "")


def _resnet_recipe(net: tv_resnet.ResNet) -> ExportRecipe:
    block = type(net.layer1[0])
    if block not in (tv_resnet.BasicBlock, tv_resnet.Bottleneck):
        raise UsageError(f"cannot export a ResNet with block {block.__name__}: expected torchvision's BasicBlock or Bottleneck")
    layers = [len(getattr(net, f"layer{i}")) for i in range(1, 5)]
    planes = [getattr(net, f"layer{i}")[0].conv1.out_channels if block is tv_resnet.BasicBlock
              else getattr(net, f"layer{i}")[0].conv2.out_channels for i in range(1, 5)]
    named = {(tv_resnet.BasicBlock, (2, 2, 2, 2)): "resnet18", (tv_resnet.BasicBlock, (3, 4, 6, 3)): "resnet34",
             (tv_resnet.Bottleneck, (3, 4, 6, 3)): "resnet50", (tv_resnet.Bottleneck, (3, 4, 23, 3)): "resnet101"}
    arch = named.get((block, tuple(layers)))
    if arch is None:
        raise UsageError(f"cannot export a ResNet with stages {layers}: expected one of torchvision's resnet18/34/50/101")
    stem = net.conv1
    width_scaled = planes != [64, 128, 256, 512]
    small_stem = stem.kernel_size == (3, 3) and stem.stride == (1, 1)
    if not small_stem and (stem.kernel_size, stem.stride) != ((7, 7), (2, 2)):
        raise UsageError(f"cannot export a ResNet stem with kernel {stem.kernel_size} stride {stem.stride}")
    lines = ["import torch", "import torchvision", f"model = torchvision.models.{arch}()",
             "model.fc = torch.nn.Identity()  # features, not ImageNet logits"]
    notes = ["classifier replaced by torch.nn.Identity: the model returns pooled features"]
    if width_scaled:
        b = block.__name__
        lines += [f"# width multiplier: stage widths {planes} instead of [64, 128, 256, 512]",
                  f"model.conv1 = torch.nn.Conv2d(3, {stem.out_channels}, 7, 2, 3, bias=False)",
                  f"model.bn1 = torch.nn.BatchNorm2d({stem.out_channels})",
                  f"model.inplanes = {stem.out_channels}"]
        for i, (p, n) in enumerate(zip(planes, layers), start=1):
            stride = "" if i == 1 else ", stride=2"
            lines.append(f"model.layer{i} = model._make_layer(torchvision.models.resnet.{b}, {p}, {n}{stride})")
        notes.append(f"width-scaled stages {planes}: rebuilt with torchvision's ResNet._make_layer")
    if small_stem:
        lines += ["# small-image stem (28-64 px inputs): 3x3 stride-1 conv, no max-pool"]
        if width_scaled:
            lines.remove(f"model.conv1 = torch.nn.Conv2d(3, {stem.out_channels}, 7, 2, 3, bias=False)")
        lines += [f"model.conv1 = torch.nn.Conv2d(3, {stem.out_channels}, 3, 1, 1, bias=False)",
                  "model.maxpool = torch.nn.Identity()"]
        notes.append("small-image stem: conv1 is 3x3 stride 1 and there is no max-pool")
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    return ExportRecipe("torchvision", arch, state, "\n".join(lines), 32 if small_stem else 64, notes)


def _vit_recipe(net: nn.Module) -> ExportRecipe:
    arch = (getattr(net, "pretrained_cfg", None) or {}).get("architecture")
    if not arch:
        raise UsageError("cannot export this timm VisionTransformer: it does not name its architecture")
    img = net.patch_embed.img_size
    kwargs: dict[str, Any] = dict(
        pretrained=False, num_classes=0, img_size=tuple(img), patch_size=tuple(net.patch_embed.patch_size),
        embed_dim=net.embed_dim, depth=len(net.blocks), num_heads=net.blocks[0].attn.num_heads,
        mlp_ratio=net.blocks[0].mlp.fc1.out_features / net.embed_dim, global_pool=net.global_pool,
        class_token=net.has_class_token, reg_tokens=net.num_reg_tokens, no_embed_class=net.no_embed_class,
        dynamic_img_size=net.dynamic_img_size,
    )
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    code = f"import timm\nmodel = timm.create_model({arch!r}, {args})"
    notes = ["num_classes=0: the model returns the pooled token (features)"]
    return ExportRecipe("timm", arch, dict(net.state_dict()), code, int(img[0]), notes)


def _swin_recipe(net: nn.Module) -> ExportRecipe:
    """timm SwinTransformer (MoBY's Swin-T): rebuilt by name with its stage shape, no classifier."""
    arch = (getattr(net, "pretrained_cfg", None) or {}).get("architecture")
    if not arch:
        raise UsageError("cannot export this timm SwinTransformer: it does not name its architecture")
    first = net.layers[0].blocks[0]
    kwargs: dict[str, Any] = dict(
        pretrained=False, num_classes=0, img_size=tuple(net.patch_embed.img_size),
        patch_size=tuple(net.patch_embed.patch_size), embed_dim=net.embed_dim,
        depths=tuple(len(layer.blocks) for layer in net.layers),
        num_heads=tuple(layer.blocks[0].attn.num_heads for layer in net.layers),
        window_size=tuple(first.window_size), mlp_ratio=first.mlp.fc1.out_features / net.embed_dim,
        global_pool=net.global_pool, dynamic_img_size=not net.patch_embed.strict_img_size,
    )
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    code = f"import timm\nmodel = timm.create_model({arch!r}, {args})"
    notes = ["num_classes=0: the model returns the average-pooled last stage (features)"]
    return ExportRecipe("timm", arch, dict(net.state_dict()), code, int(net.patch_embed.img_size[0]), notes)


def _timm_recipe(net: nn.Module) -> ExportRecipe:
    """Any other timm model (the convnets of `timm:<name>` backbones): rebuilt by its registered
    name with timm's defaults and no classifier. Only a model built with those defaults fits;
    the strict load and the feature check at export catch any other."""
    arch = (getattr(net, "pretrained_cfg", None) or {}).get("architecture")
    if not arch:
        raise UsageError(f"cannot export this timm {type(net).__name__}: it does not name its architecture")
    code = f"import timm\nmodel = timm.create_model({arch!r}, pretrained=False, num_classes=0)"
    size = (getattr(net, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-1]
    notes = ["num_classes=0: the model returns its pooled pre-logits features"]
    return ExportRecipe("timm", arch, dict(net.state_dict()), code, int(size), notes)


def _is_timm_model(net: nn.Module) -> bool:
    return type(net).__module__.startswith("timm.") and bool((getattr(net, "pretrained_cfg", None) or {}).get("architecture"))


_SEQUENTIAL_LAYERS: dict[type, Callable[[nn.Module], str]] = {
    nn.Conv2d: lambda m: (f"torch.nn.Conv2d({m.in_channels}, {m.out_channels}, {m.kernel_size}, stride={m.stride}, "
                          f"padding={m.padding}, bias={m.bias is not None})"),
    # any batch norm (incl. SyncBatchNorm used in training) is a BatchNorm2d at inference
    nn.modules.batchnorm._BatchNorm: lambda m: f"torch.nn.BatchNorm2d({m.num_features}, eps={m.eps}, momentum={m.momentum})",
    nn.ReLU: lambda m: "torch.nn.ReLU()",
    nn.AdaptiveAvgPool2d: lambda m: f"torch.nn.AdaptiveAvgPool2d({m.output_size!r})",
    nn.Flatten: lambda m: f"torch.nn.Flatten({m.start_dim}, {m.end_dim})",
    nn.Identity: lambda m: "torch.nn.Identity()",
}


def _sequential_recipe(net: nn.Sequential) -> ExportRecipe:
    parts = []
    for layer in net:
        make = next((f for t, f in _SEQUENTIAL_LAYERS.items() if isinstance(layer, t)), None)
        if make is None:
            raise UsageError(f"cannot export a Sequential containing {type(layer).__name__}; "
                             f"expected only {', '.join(t.__name__.lstrip('_') for t in _SEQUENTIAL_LAYERS)}")
        parts.append("    " + make(layer) + ",")
    code = "import torch\nmodel = torch.nn.Sequential(\n" + "\n".join(parts) + "\n)"
    return ExportRecipe("torch", "sequential", dict(net.state_dict()), code, 32,
                        ["a plain torch.nn.Sequential (no library model has this shape)"])


def _is_timm_vit(net: nn.Module) -> bool:
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(net, VisionTransformer)


def _is_timm_swin(net: nn.Module) -> bool:
    try:
        from timm.models.swin_transformer import SwinTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return isinstance(net, SwinTransformer)


# Which library model a backbone's network is, checked in order (a registry, not an if-chain).
RECIPES: list[tuple[Callable[[nn.Module], bool], Callable[[Any], ExportRecipe]]] = [
    (lambda n: isinstance(n, tv_resnet.ResNet), _resnet_recipe),
    (_is_timm_vit, _vit_recipe),
    (_is_timm_swin, _swin_recipe),
    (_is_timm_model, _timm_recipe),
    (lambda n: isinstance(n, nn.Sequential), _sequential_recipe),
]


def export_recipe(backbone: nn.Module) -> ExportRecipe:
    """The library model, weights and build code for `backbone` (a viewstream backbone or a bare net)."""
    net, _ = _inner_module(backbone)
    for matches, make in RECIPES:
        if matches(net):
            recipe = make(net)
            recipe.state_dict = {k: v.detach().cpu().contiguous().clone() for k, v in recipe.state_dict.items()}
            return recipe
    raise UsageError(f"cannot export a {type(net).__name__} backbone: expected a torchvision ResNet, "
                     "a timm model (VisionTransformer, SwinTransformer or one built by name) or a torch.nn.Sequential")


def build_from_code(code: str) -> nn.Module:
    """Run a recipe's build code (our own generated text) and return its `model`."""
    namespace: dict[str, Any] = {}
    exec(compile(code, "<viewstream export build code>", "exec"), namespace)  # noqa: S102 - generated here
    return namespace["model"]


def load_code(recipe_code: str, weights_file: str) -> str:
    """The complete snippet a user runs to get the exported model (no viewstream needed)."""
    return (f"{recipe_code}\nfrom safetensors.torch import load_file\n"
            f"model.load_state_dict(load_file({weights_file!r}), strict=True)\nmodel.eval()")


@dataclass(frozen=True)
class ExportInfo:
    weights: Path
    sidecar: Path
    metadata: dict[str, Any]


def export_backbone(backbone: nn.Module, path: str | os.PathLike, *, metadata: Optional[dict[str, Any]] = None,
                    verify: bool = True, atol: float = 1e-5) -> ExportInfo:
    """Write `path` (.safetensors) and `path`.json; verify the rebuild gives the same features.

    `metadata` (method, checkpoint, step, input size and normalisation) is stored alongside.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UsageError(f"export path {str(path)!r} must end in .safetensors")
    recipe = export_recipe(backbone)
    if verify:
        _verify(backbone, recipe, atol)
    meta = {
        "format": EXPORT_FORMAT, "library": recipe.library, "architecture": recipe.architecture,
        "build_code": recipe.build_code, "load_code": load_code(recipe.build_code, path.name),
        "notes": recipe.notes, "num_tensors": len(recipe.state_dict),
    } | (metadata or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(recipe.state_dict, str(path), metadata={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return ExportInfo(path, sidecar, meta)


def _verify(backbone: nn.Module, recipe: ExportRecipe, atol: float) -> None:
    rebuilt = build_from_code(recipe.build_code)
    rebuilt.load_state_dict(recipe.state_dict, strict=True)
    x = torch.randn(2, 3, recipe.image_size, recipe.image_size, generator=torch.Generator().manual_seed(0))
    was_training = backbone.training
    backbone.eval()
    rebuilt.eval()
    try:
        with torch.no_grad():
            diff = (backbone(x).flatten(1) - rebuilt(x).flatten(1)).abs().max().item()
    finally:
        backbone.train(was_training)
    if diff > atol:
        raise RuntimeError(f"exported {recipe.architecture} differs from the backbone by {diff:.3g} (> {atol})")


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata stored in an exported .safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    if raw is None:
        raise UsageError(f"{str(path)!r} is not a viewstream export (no {METADATA_KEY} metadata)")
    return json.loads(raw)


def load_exported(path: str | os.PathLike) -> nn.Module:
    """Rebuild the library model from an export's own metadata and load its weights (strict)."""
    meta = read_export_metadata(path)
    model = build_from_code(meta["build_code"])
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def export_checkpoint(checkpoint: str, path: str | os.PathLike, *, endpoint_url: Optional[str] = None) -> ExportInfo:
    """`export_backbone` of a training checkpoint's backbone, its metadata naming the producer
    and the eval input (image size, ImageNet mean and std) when the checkpoint records it."""
    from evaluation.sources import load_checkpoint_backbone
    from pipeline.spec import IMAGENET_MEAN, IMAGENET_STD

    backbone, info = load_checkpoint_backbone(checkpoint, endpoint_url)
    meta = info.producer()
    if info.image_size:
        meta["input"] = {"image_size": info.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return export_backbone(backbone, path, metadata=meta)
