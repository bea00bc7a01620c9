"""Low-rank factorization: truncated SVD for Linear layers, Tucker-2 for Conv2d, then fine-tuning.

Importing this package registers the "factorize" structural edit, so .mzip files of factorized
models load.
"""
from .factorize import DEFAULT_RATIO, LowRankConfig, factorize_, low_rank
from .ranks import energy_ranks, factorized_count, rank_for_energy, rank_for_ratio
from .svd import svd_factors
from .tucker import tucker2_factors

__all__ = ["DEFAULT_RATIO", "LowRankConfig", "energy_ranks", "factorize_", "factorized_count",
           "low_rank", "rank_for_energy", "rank_for_ratio", "svd_factors", "tucker2_factors"]
