"""Structured compression that shrinks the running network: channel groups, removal, slimming, filter pruning,
batch-norm folding."""
from .fold import fold_batch_norms_
from .graph import ChannelGraph, Group, Segment, trace
from .remove import feature_index, remove_channels_
from .select import Criterion, channel_scores, select_channels
from .slimming import ChannelPruneConfig, Slimmed, SlimmingConfig, network_slimming, prune_channels_, scale_penalty

__all__ = ["ChannelGraph", "ChannelPruneConfig", "Criterion", "Group", "Segment", "Slimmed", "SlimmingConfig",
           "channel_scores", "feature_index", "fold_batch_norms_", "network_slimming", "prune_channels_",
           "remove_channels_", "scale_penalty", "select_channels", "trace"]
