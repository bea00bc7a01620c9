"""Quantization: k-means codebooks and trained weight sharing."""
from .kmeans import Init, initial_centroids, kmeans_codebook
from .sharing import QuantizeConfig, SharedWeights, quantize_, trained_quantization

__all__ = ["Init", "QuantizeConfig", "SharedWeights", "initial_centroids", "kmeans_codebook", "quantize_",
           "trained_quantization"]
