"""A stand-in for the few pydantic features our method/backbone/optimizer configs use.

Why it exists: benchmarks/gpu_check.py must run on a bare GPU box (torch, torchvision, timm,
pyarrow, pillow, numpy, tqdm; no pydantic, whose core is a compiled wheel). Our methods are
plain torch, but their configs are pydantic models. `install()` puts this module in
``sys.modules["pydantic"]`` ONLY when the real pydantic cannot be imported, so the configs
build: defaults, ``Field(default | default_factory)``, nested models from dicts, ``extra=forbid``,
``model_validator(mode="after")`` checks, ``model_dump``. Field constraints (gt, ge, ...) and
``field_validator``s are NOT enforced: the check builds known-good configs only.
"""
from __future__ import annotations

import copy
import sys
import types
import typing
from typing import Any, ClassVar

_MISSING = object()


class ValidationError(ValueError):
    def errors(self) -> list[dict[str, Any]]:
        return [{"loc": (), "msg": str(self), "input": None}]


class _FieldInfo:
    def __init__(self, default: Any = _MISSING, default_factory: Any = None, **_: Any) -> None:
        self.default = _MISSING if default is Ellipsis else default
        self.default_factory = default_factory


def Field(default: Any = _MISSING, *, default_factory: Any = None, **kwargs: Any) -> Any:  # noqa: N802
    return _FieldInfo(default, default_factory, **kwargs)


def ConfigDict(**kwargs: Any) -> dict[str, Any]:  # noqa: N802
    return dict(kwargs)


def model_validator(*, mode: str = "after"):
    def mark(fn):
        fn.__shim_after__ = mode == "after"
        return fn
    return mark


def field_validator(*_fields: str, **_kwargs: Any):
    return lambda fn: fn


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _coerce(hint: Any, value: Any) -> Any:
    if isinstance(value, dict):
        candidates = [hint] if _is_model(hint) else [a for a in typing.get_args(hint) if _is_model(a)]
        if candidates:
            return candidates[0](**value)
    return value


class BaseModel:
    model_config: ClassVar[dict[str, Any]] = {}

    @classmethod
    def _fields(cls) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        return {n: h for n, h in hints.items() if typing.get_origin(h) is not ClassVar and h is not ClassVar
                and not n.startswith("_") and n != "model_config"}

    def __init__(self, **data: Any) -> None:
        for name, hint in self._fields().items():
            if name in data:
                value = data.pop(name)
            else:
                default = getattr(type(self), name, _MISSING)
                if isinstance(default, _FieldInfo):
                    default = default.default_factory() if default.default_factory else default.default
                if default is _MISSING:
                    raise ValidationError(f"{type(self).__name__}.{name}: field required")
                value = copy.deepcopy(default)
            object.__setattr__(self, name, _coerce(hint, value))
        if data and self.model_config.get("extra") == "forbid":
            raise ValidationError(f"{type(self).__name__}: unexpected fields {sorted(data)}")
        for klass in reversed(type(self).__mro__):
            for fn in vars(klass).values():
                if getattr(fn, "__shim_after__", False):
                    fn(self)

    def model_dump(self, **_: Any) -> dict[str, Any]:
        return {n: (v.model_dump() if isinstance(v, BaseModel) else copy.deepcopy(v))
                for n, v in ((n, getattr(self, n)) for n in self._fields())}

    def model_copy(self, update: dict[str, Any] | None = None, deep: bool = False) -> "BaseModel":
        return type(self)(**{**self.model_dump(), **(update or {})})

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.model_dump() == other.model_dump()  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_dump()})"


PositiveInt = int
NonNegativeInt = int
PositiveFloat = float


def install() -> str:
    """Use the real pydantic when importable, else this stand-in. Returns which one."""
    try:
        import pydantic  # noqa: F401
        return "pydantic"
    except ImportError:
        module = types.ModuleType("pydantic")
        for name in ("BaseModel", "ConfigDict", "Field", "ValidationError", "model_validator", "field_validator",
                     "PositiveInt", "NonNegativeInt", "PositiveFloat"):
            setattr(module, name, globals()[name])
        sys.modules["pydantic"] = module
        return "shim"
