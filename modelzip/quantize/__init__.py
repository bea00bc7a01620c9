"""Quantization: k-means codebooks and trained sharing; uniform (affine, binary, ternary) codes and QAT; hashing."""
from .hashing import HashedConv2d, HashedLinear, hash_
from .kmeans import Init, initial_centroids, kmeans_codebook
from .pack import pack, packed_size, unpack
from .qat import QATMethod, prepare_qat
from .sharing import QuantizeConfig, SharedWeights, quantize_, trained_quantization
from .uniform import Observer, QuantSpec, dequantize, fake_quantize, qparams, qrange, quantize

__all__ = ["HashedConv2d", "HashedLinear", "Init", "Observer", "QATMethod", "QuantSpec", "QuantizeConfig", "SharedWeights", "dequantize",
           "fake_quantize", "hash_", "initial_centroids", "kmeans_codebook", "pack", "packed_size", "prepare_qat", "qparams",
           "qrange", "quantize", "quantize_", "trained_quantization", "unpack"]
