"""Shared test data: pruned + quantized weight matrices shaped like Deep Compression's LeNet-300-100."""

import numpy as np
import pytest


def pruned_quantized(rng: np.random.Generator, shape: tuple[int, ...], keep: float, levels: int = 32) -> np.ndarray:
    """float32 weights with a `keep` fraction non-zero, drawn (bell-shaped) from `levels` shared values."""
    codebook = np.sort(rng.normal(0.0, 0.05, levels)).astype(np.float32)
    weights = np.zeros(int(np.prod(shape)), dtype=np.float32)
    kept = rng.choice(weights.size, round(keep * weights.size), replace=False)
    which = np.clip(rng.normal(levels / 2, levels / 6, kept.size).astype(int), 0, levels - 1)
    weights[kept] = codebook[which]
    return weights.reshape(shape)


@pytest.fixture(scope="session")
def lenet() -> dict[str, np.ndarray]:
    """LeNet-300-100 after pruning to the paper's densities (8%, 9%, 26%) and 32-level sharing."""
    rng = np.random.default_rng(300100)
    return {
        "fc1.weight": pruned_quantized(rng, (300, 784), 0.08),
        "fc1.bias": rng.normal(0, 0.1, 300).astype(np.float32),
        "fc2.weight": pruned_quantized(rng, (100, 300), 0.09),
        "fc2.bias": rng.normal(0, 0.1, 100).astype(np.float32),
        "fc3.weight": pruned_quantized(rng, (10, 100), 0.26),
        "fc3.bias": rng.normal(0, 0.1, 10).astype(np.float32),
    }


@pytest.fixture(scope="session")
def make_pruned():
    """The `pruned_quantized` builder, for tests that need their own shapes and densities."""
    return pruned_quantized
