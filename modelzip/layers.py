"""Which weights of which layers can be compressed, and the prepare/strip mechanics shared by methods.

Methods attach to weights through `torch.nn.utils.parametrize` (a mask, shared centroids, ...), so
any nn.Module subclass works and training needs no special code; `strip` bakes the result into a
plain module. A custom layer opts in by naming its weights in a `modelzip_weights` attribute
(e.g. `modelzip_weights = ("weight",)`) and, optionally, its `modelzip_kind` ("linear" or "conv").
"""
from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import ConfigError, ModelError

COMPRESSIBLE: dict[type[nn.Module], tuple[str, tuple[str, ...]]] = {
    # layer type: (kind used to pick per-type settings, the names of its compressible weights)
    nn.Linear: ("linear", ("weight",)),
    nn.Bilinear: ("linear", ("weight",)),
    nn.Embedding: ("linear", ("weight",)),
    nn.Conv1d: ("conv", ("weight",)),
    nn.Conv2d: ("conv", ("weight",)),
    nn.Conv3d: ("conv", ("weight",)),
    nn.ConvTranspose2d: ("conv", ("weight",)),
}
EXTENSION_HINT = ("register the layer type in modelzip.layers.COMPRESSIBLE, or give the class a "
                  "`modelzip_weights` tuple of weight names")

V = TypeVar("V")


@dataclass(frozen=True)
class Target:
    """One compressible weight: module `name` (as in named_modules), the parameter, and its kind."""

    name: str
    module: nn.Module
    param: str
    kind: str

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.param)


def targets(model: nn.Module) -> list[Target]:
    """Every compressible weight of `model`, in module order."""
    found = []
    for name, module in model.named_modules():
        kind_params = _kind_params(module)
        if kind_params:
            kind, params = kind_params
            found.extend(Target(name, module, p, kind) for p in params)
    if not found:
        raise ModelError(f"{type(model).__name__} has no compressible layers; {EXTENSION_HINT}")
    return found


def per_target(model: nn.Module, found: list[Target], default: Mapping[str, V] | V,
               overrides: Mapping[str, V] | None) -> dict[Target, V]:
    """A setting for every target: the per-kind (or single) default, then name-pattern overrides.

    Override keys are fnmatch patterns on module names ("fc3", "conv*"). A pattern matching no
    compressible layer is a mistake worth an error: the user meant something that will not happen.
    """
    values: dict[Target, V] = {}
    for t in found:
        if isinstance(default, Mapping):
            if t.kind not in default:
                raise ConfigError(f"no setting for {t.kind} layers (layer {t.name!r}); give one for {t.kind!r}")
            values[t] = default[t.kind]
        else:
            values[t] = default
    modules = dict(model.named_modules())
    for pattern, value in (overrides or {}).items():
        hits = [t for t in found if fnmatch.fnmatchcase(t.name, pattern)]
        if not hits:
            plain = [n for n in modules if n and fnmatch.fnmatchcase(n, pattern)]
            if plain:
                raise ModelError(f"layer {plain[0]!r} ({type(modules[plain[0]]).__name__}) is not compressible; "
                                 f"{EXTENSION_HINT}")
            raise ConfigError(f"layer pattern {pattern!r} matches no compressible layer "
                              f"(they are: {', '.join(t.name for t in found)})")
        for t in hits:
            values[t] = value
    return values


def literal_pattern(name: str) -> str:
    """An fnmatch pattern matching exactly `name` (brackets quote the wildcard characters)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def parametrization(target: Target, kind: type[nn.Module]) -> nn.Module | None:
    """The parametrization of type `kind` attached to the target's weight, if any."""
    if not parametrize.is_parametrized(target.module, target.param):
        return None
    return next((p for p in target.module.parametrizations[target.param] if isinstance(p, kind)), None)


def strip(model: nn.Module) -> nn.Module:
    """Bake every parametrization (masks, shared centroids) into plain weights, in place; returns model."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def _kind_params(module: nn.Module) -> tuple[str, tuple[str, ...]] | None:
    declared = getattr(module, "modelzip_weights", None)
    if declared is not None:
        return getattr(module, "modelzip_kind", "linear"), tuple(declared)
    for cls in type(module).__mro__:
        if cls in COMPRESSIBLE:
            return COMPRESSIBLE[cls]
    return None


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict `strip(model)` would have, without touching `model`.

    Parametrized weights appear under their plain names with their current (masked, shared) values;
    the parametrizations' own state (masks, codes, centroids) is dropped. Stripping a deep copy is no
    substitute: a copy shares its parametrized class with the original, and stripping it would break
    the original's weight property.
    """
    state: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        owner, marker, rest = key.rpartition("parametrizations.")
        if not marker:
            state[key] = value
            continue
        param, _, tail = rest.partition(".")
        if tail == "original":
            state[owner + param] = getattr(model.get_submodule(owner.rstrip(".")), param).detach()
    return state


def parameter_count(model: nn.Module) -> int:
    """Number of parameters `strip(model)` would have (a parametrization's extra state not counted).

    A layer whose weights are stored as codes (`modelzip_coded_weights`, quantize/coded.py) counts them:
    they are its weights, frozen, not extra state.
    """
    names = {n.replace("parametrizations.", "").removesuffix(".original") for n, _ in model.named_parameters()
             if "parametrizations." not in n or n.endswith(".original")}
    coded = sum(getattr(m, "modelzip_coded_weights", 0) for m in model.modules())
    return coded + sum(t.numel() for k, t in plain_state_dict(model).items() if k in names)


def device_of(model: nn.Module) -> torch.device:
    """Where the model's parameters live (the CPU for a model without any): where its inputs must go."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode for the block; every module's own training flag is restored after, however it ends."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


def require_finite(named: Iterable[tuple[str, torch.Tensor]], doing: str) -> None:
    """ModelError naming the first floating-point tensor that holds NaN or infinite values: refuse `doing`."""
    for name, tensor in named:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(f"tensor {name!r} holds NaN or infinite values; refusing to {doing} a broken model")


def independent_copy(model: nn.Module) -> nn.Module:
    """A deep copy sharing nothing with `model`, not even the classes that parametrize makes.

    `copy.deepcopy` of a parametrized module keeps its class (`ParametrizedLinear`), and the weight
    property lives on that class: removing or adding a parametrization on the copy (quantizing a
    pruned layer, stripping) would delete or add the property under the original too. Each
    parametrized module of the copy gets a class of its own, identical in content.
    """
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if parametrize.is_parametrized(module):
            cls = type(module)
            module.__class__ = type(cls.__name__, cls.__bases__, dict(vars(cls)))
    return clone


def plain_type(module: nn.Module) -> type[nn.Module]:
    """The module's own class: parametrize swaps in a generated subclass, look through it."""
    return type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)


def check_replaceable(name: str, layer: nn.Module, doing: str) -> None:
    """A layer a transform will replace (`doing`: "factorizing", "hashing") must be a named sublayer with
    plain, finite weights: masks or shared centroids would be silently lost in the replacement."""
    if not name:
        raise ModelError(f"the model itself is a {type(layer).__name__}; wrap it (nn.Sequential) before {doing} it")
    if parametrize.is_parametrized(layer):
        raise ModelError(f"layer {name!r} has parametrized weights (masks or shared centroids); "
                         f"call modelzip.strip(model) before {doing}")
    if not torch.isfinite(layer.weight).all():
        raise ModelError(f"layer {name!r} has NaN or infinite weights; {doing} a broken layer makes no sense")


def replacing(found: list[Target], values: Mapping[Target, V | None], named: set[str],
              accepts: Callable[[nn.Module], bool], why_not: str) -> Iterator[tuple[Target, V]]:
    """The (target, value) pairs a layer-replacing transform acts on: a value set and a layer it accepts.

    A layer it cannot replace is skipped, unless the user named it (`named`): then ModelError, with
    `why_not` ("cannot be hashed: only ...") saying which layers it can replace.
    """
    for t in found:
        value = values[t]
        if value is None:
            continue
        if not accepts(t.module):
            if t.name in named:
                raise ModelError(f"layer {t.name!r} ({type(t.module).__name__}) {why_not}; drop it from `layers`")
            continue
        yield t, value
