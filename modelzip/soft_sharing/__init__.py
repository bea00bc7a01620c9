"""Soft weight-sharing (Ullrich, Meeds & Welling 2017): a learned Gaussian-mixture prior over the weights,
then pruning and quantization to the mixture's means."""
from .merge import assign, kl_divergence, merge_components, quantize_to_means_
from .prior import Gamma, GaussianMixturePrior
from .retrain import SoftSharing, SoftSharingConfig, covered, soft_weight_sharing

__all__ = ["Gamma", "GaussianMixturePrior", "SoftSharing", "SoftSharingConfig", "assign", "covered", "kl_divergence",
           "merge_components", "quantize_to_means_", "soft_weight_sharing"]
