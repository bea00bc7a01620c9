"""Reference architectures of the papers, and how any model is built and rebuilt."""
from .build import arch_label, arch_of, build, input_shape_of, load_weights, rebuild
from .activations import ACTIVATIONS
from .edits import EDITS, apply_edits, record_edit
from .reference import MODELS, lenet_5, lenet_300_100, mlp, mlp_800_800, mlp_1200_1200

__all__ = ["ACTIVATIONS", "EDITS", "MODELS", "apply_edits", "arch_label", "arch_of", "build", "input_shape_of",
           "lenet_5", "lenet_300_100", "load_weights", "mlp", "mlp_800_800", "mlp_1200_1200", "rebuild", "record_edit"]
