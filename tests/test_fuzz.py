"""Mutated .mzip files (modelzip.codec.mutate) load or raise a modelzip error, never anything else.

The long run (>= 150k mutations in memory-capped workers) is benchmarks/fuzz.py; this is its fast property test.
"""
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import modelzip
from modelzip.codec.mutate import CHECKED, MUTATIONS, join, split
from modelzip.io import same_weights
from modelzip.lowrank import factorize_
from modelzip.models import build
from modelzip.quantize import QuantSpec, hash_, quantize_weights_
from modelzip.structured import ChannelPruneConfig, fold_batch_norms_, prune_channels_


@pytest.fixture(scope="module")
def seeds() -> list[tuple[bytes, nn.Module]]:
    """Small files covering every encoding and every structural edit: (bytes, the model they load to)."""
    torch.manual_seed(0)
    shared = build("lenet-300-100", (1, 8, 8), 10)
    modelzip.prune_(shared, 0.9)
    modelzip.quantize_(shared, 4)
    coded = build("mlp-16-8", (1, 4, 4), 3)
    quantize_weights_(coded, {"linear": QuantSpec(bits=4)}, layers={"fc1": QuantSpec(bits=8, symmetric=False)})
    slim = build("vgg-bn", (1, 8, 8), 4, widths=[4, "M", 4], hidden=8)
    for norm in (slim.norm1, slim.norm2, slim.norm_fc1):
        norm.weight.data.uniform_()
    prune_channels_(slim, (1, 8, 8), ChannelPruneConfig(amount=0.5))
    fold_batch_norms_(slim.eval())
    factorize_(slim, layers={"fc1": 0.5})
    hash_(slim, layers={"fc2": 0.5})
    files = [modelzip.dumps(model) for model in (shared, coded, slim)]
    return [(data, modelzip.loads(data)) for data in files]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2), donor=st.integers(0, 2), kind=st.sampled_from(list(MUTATIONS)), rng=st.randoms())
def test_mutated_files_load_or_raise_modelzip_errors(seeds, seed, donor, kind, rng):
    data, original = seeds[seed]
    mutated, description = MUTATIONS[kind](data, rng, seeds[donor][0])
    try:
        loaded = modelzip.loads(mutated)
    except modelzip.ModelzipError:
        return
    except Exception as exc:  # the property: nothing else escapes
        raise AssertionError(f"{kind} mutation ({description}) raised {type(exc).__name__}: {exc}") from exc
    assert isinstance(loaded, nn.Module)
    if kind not in CHECKED:  # without recomputed checksums only the unchanged file loads
        assert mutated == data and same_weights(loaded, original), description


def test_mutations_are_deterministic_and_keep_checksums_valid(seeds):
    data = seeds[0][0]
    header, sections = split(data)
    assert join(header, sections) != data  # the writer's JSON is compact and sorted; the bytes differ...
    assert same_weights(modelzip.loads(join(header, sections)), seeds[0][1])  # ...the meaning does not
    for kind, mutate in MUTATIONS.items():
        assert mutate(data, random.Random(7), data) == mutate(data, random.Random(7), data), kind
