"""Quantization: k-means codebooks and trained sharing (Deep Compression); uniform affine, binary and ternary
codes with QAT; product quantization and Quant-Noise; hashing-based sharing; data-free calibration inputs."""
from .coded import (PQConv2d, PQLinear, QuantizedConv2d, QuantizedEmbedding, QuantizedLinear, coded_layer,
                    quantize_weights_, record_coded)
from .datafree import calibrate_activations, synthesize
from .hashing import HashStructure, HashedConv2d, HashedLinear, hash_
from .int8 import RangeObserver, int8_model
from .kmeans import Init, initial_centroids, kmeans_codebook, lloyd_1d, optimal_1d
from .mixed import bit_specs, mixed_precision
from .noise import NoiseMode, QuantNoise, finish_quant_noise, prepare_quant_noise
from .pack import pack, packed_size, unpack
from .pq import PQWeights, pq_bytes, pq_decode, pq_encode, pq_quantize_
from .qat import QATMethod, prepare_qat
from .sharing import QuantizeConfig, SharedWeights, quantize_, trained_quantization
from .stage import UniformConfig, uniform_quantization
from .uniform import Observer, QuantSpec, dequantize, fake_quantize, qparams, qrange, quantize

__all__ = ["HashStructure", "HashedConv2d", "HashedLinear", "Init", "NoiseMode", "Observer", "PQConv2d", "PQLinear",
           "PQWeights", "QATMethod", "QuantNoise", "QuantSpec", "QuantizeConfig", "QuantizedConv2d",
           "QuantizedEmbedding", "QuantizedLinear", "RangeObserver", "SharedWeights", "UniformConfig", "bit_specs",
           "calibrate_activations", "coded_layer", "dequantize", "fake_quantize", "finish_quant_noise", "hash_",
           "initial_centroids", "int8_model", "kmeans_codebook", "lloyd_1d", "optimal_1d", "mixed_precision", "pack", "packed_size",
           "pq_bytes", "pq_decode", "pq_encode", "pq_quantize_", "prepare_qat", "prepare_quant_noise", "qparams",
           "qrange", "quantize", "quantize_", "quantize_weights_", "record_coded", "synthesize",
           "trained_quantization", "uniform_quantization", "unpack"]
