"""Knowledge distillation (Hinton et al. 2015): the loss, teachers and ensembles, omitted classes, specialists."""
from .bias import adjust_bias_, output_layer, search_bias_offset
from .loss import ensemble_logits, kd_loss
from .specialists import SpecialistEnsemble, confusable_groups, make_specialist, train_specialists
from .student import DistillConfig, distill, teaching
from .teachers import cache_soft_logits, soft_logits
from .transfer import only_classes, unlabeled, without_classes

__all__ = ["DistillConfig", "SpecialistEnsemble", "adjust_bias_", "cache_soft_logits", "confusable_groups", "distill",
           "ensemble_logits", "kd_loss", "make_specialist", "only_classes", "output_layer", "search_bias_offset",
           "soft_logits", "teaching", "train_specialists", "unlabeled", "without_classes"]
