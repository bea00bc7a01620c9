"""modelzip: zip for neural networks.

    import modelzip
    data = modelzip.load_data("mnist5k")
    model = modelzip.build("lenet-300-100")
    result = modelzip.compress(model, data, "deep-compression", pretrained=False, out="lenet.mzip")
    same = modelzip.load("lenet.mzip")
"""
from .data import DataBundle, load_data
# distill() itself is modelzip.distill.distill: the subpackage keeps its name
from .distill import DistillConfig, kd_loss
from .errors import (ChecksumError, ConfigError, DataError, FormatError, LimitError, ModelError, ModelzipError,
                     TruncatedError)
from .io import dumps, header, load, loads, save
from .layers import strip
from .lowrank import LowRankConfig, factorize_, low_rank
from .models import build
from .pipeline import Compressed, compress
from .prune import PruneConfig, iterative_prune, obd_score, prune_, sparsify_
from .second_order import SecondOrderConfig, second_order_
from .quantize import (QuantizeConfig, QuantSpec, UniformConfig, prepare_qat, quantize_, quantize_weights_,
                       trained_quantization, uniform_quantization)
from .recipes import Recipe, load_recipe
# profile() and sensitivity() live in modelzip.profile / modelzip.sensitivity: the modules keep their names
from .sensitivity import allocate
from .soft_sharing import GaussianMixturePrior, SoftSharingConfig, soft_weight_sharing
from .structured import ChannelPruneConfig, SlimmingConfig, network_slimming, prune_channels_
from .train import TrainConfig, evaluate, fit, predict

__version__ = "0.1.0"

__all__ = [
    "ChannelPruneConfig", "ChecksumError", "Compressed", "ConfigError", "DataBundle", "DataError", "DistillConfig",
    "FormatError", "GaussianMixturePrior", "LimitError", "LowRankConfig", "ModelError", "ModelzipError", "PruneConfig",
    "QuantSpec", "QuantizeConfig", "Recipe", "SecondOrderConfig", "SlimmingConfig", "SoftSharingConfig",
    "TrainConfig", "TruncatedError", "UniformConfig", "allocate", "build", "compress", "dumps", "evaluate",
    "factorize_", "fit", "header", "iterative_prune", "kd_loss", "load", "load_data", "load_recipe", "loads",
    "low_rank", "network_slimming", "obd_score", "predict", "prepare_qat", "prune_", "prune_channels_", "quantize_",
    "quantize_weights_", "save", "second_order_", "soft_weight_sharing", "sparsify_", "strip",
    "trained_quantization", "uniform_quantization",
]
