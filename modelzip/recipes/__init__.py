"""Recipes: YAML files mapped onto the methods' typed configs. Built-in ones ship beside this file.

A recipe is data only: `yaml.safe_load`, then every key is checked against the dataclass it fills,
so a typo is an error naming the key and the valid ones, never a silently ignored setting.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from ..distill import DistillConfig
from ..errors import ConfigError
from ..lowrank import LowRankConfig
from ..prune import PruneConfig
from ..quantize import QuantizeConfig, UniformConfig
from ..second_order import SecondOrderConfig
from ..soft_sharing import SoftSharingConfig
from ..structured import SlimmingConfig
from ..train import TrainConfig

BUILT_IN = Path(__file__).parent


@dataclass(frozen=True)
class DistillStage(DistillConfig):
    """Distillation as a recipe stage: the given model is the teacher of a new `student`."""

    student: str = "lenet-300-100"  # a built-in name, or mlp-H1-H2-...
    activation: str = "relu"  # the student's activation: relu or lma


@dataclass(frozen=True)
class Recipe:
    """The stages of a compression run, each optional; they run in this order."""

    name: str = "custom"
    train: TrainConfig = TrainConfig()  # only when the model comes without trained weights
    distill: DistillStage | None = None  # then the student is what gets pruned, quantized and encoded
    slimming: SlimmingConfig | None = None  # channels removed for real: a smaller dense network
    low_rank: LowRankConfig | None = None  # layers replaced by products of thin ones
    prune: PruneConfig | None = None
    second_order: SecondOrderConfig | None = None  # one-shot post-training prune/quantize with OBS compensation
    soft_sharing: SoftSharingConfig | None = None  # retrain under a mixture prior, quantize to its means
    quantize: QuantizeConfig | None = None  # k-means weight sharing (Deep Compression)
    uniform: UniformConfig | None = None  # uniform integer codes (int8, int4, binary, ...): post-training or QAT
    seed: int = 0

    def __post_init__(self) -> None:
        chosen = [k for k in ("soft_sharing", "quantize", "uniform") if getattr(self, k) is not None]
        if self.second_order is not None and self.second_order.quantizes:
            chosen.append("second_order")
        if len(chosen) > 1:
            raise ConfigError(f"a recipe takes one of soft_sharing, quantize, uniform and a quantizing second_order, "
                              f"got {' and '.join(chosen)}: each quantizes the weights its own way")


def built_in() -> list[str]:
    """Names of the recipes shipped with modelzip."""
    return sorted(p.stem for p in BUILT_IN.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name ("deep-compression") or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = BUILT_IN / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown recipe {name_or_path!r} (built in: {', '.join(built_in())}; "
                              "or give a path to a .yaml file)")
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from None
    except RecursionError:  # the parser recurses per nesting level; no recipe nests more than a few
        raise ConfigError(f"recipe {path} nests too deeply to be a recipe") from None
    return from_mapping(Recipe, data or {}, str(path))


def from_mapping(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a plain mapping, recursively, checking keys and types by the hints."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"valid: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {key: _convert(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if len(errors) == 1 else f"{where}: {value!r} fits none of {hint}")
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where)
    if origin is not None and issubclass(origin, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is tuple:  # tuple[X, ...]: a YAML list
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(e.value for e in hint)}") from None
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    return value
