"""The distillation loss and the soft targets of one teacher or an ensemble: tensor functions only."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None,
            T: float = 4.0, alpha: float = 0.9, *, kl: bool = False) -> torch.Tensor:
    """Knowledge-distillation loss of Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
    Network" (2015, arXiv 1503.02531), section 2:

        L = alpha * T^2 * H(softmax(t / T), softmax(s / T)) + (1 - alpha) * H(y, softmax(s))

    with s the student's and t the teacher's logits (batch, classes), H(p, q) = -sum p log q averaged
    over the batch, y the hard labels. The gradient of the soft term scales as 1/T^2, so the factor
    T^2 keeps its share of the total gradient when T changes. Without `targets` (an unlabeled transfer
    set) the loss is the soft term alone (times T^2, whatever alpha). `kl=True` uses KL(p_t || p_s),
    which differs from the cross-entropy by the teacher's entropy: same gradients, zero at a perfect match.
    """
    if T <= 0 or not 0 <= alpha <= 1:
        raise ConfigError(f"kd_loss needs T > 0 and 0 <= alpha <= 1, got T={T}, alpha={alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} differ in shape")
    log_p_student = F.log_softmax(student_logits / T, dim=-1)  # (batch, classes)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / T, dim=-1)
    per_example = -(log_p_teacher.exp() * log_p_student).sum(-1)  # H(p_t, p_s): (batch,)
    if kl:
        per_example = per_example + (log_p_teacher.exp() * log_p_teacher).sum(-1)
    soft = per_example.mean() * T * T
    if targets is None or alpha == 1:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, targets)


def ensemble_logits(member_logits: torch.Tensor, T: float) -> torch.Tensor:
    """Logits (batch, classes) whose softmax at temperature T is the members' average probability.

    An ensemble's soft targets are mean_i softmax(z_i / T) (the paper's ensembles average
    probabilities, not logits); T * log of that mean is a set of logits with exactly that softmax at T,
    so ensembles, single teachers and cached targets all go through `kd_loss` unchanged.
    member_logits: (members, batch, classes).
    """
    if member_logits.dim() != 3:
        raise ConfigError(f"member logits must be (members, batch, classes), got {tuple(member_logits.shape)}")
    log_mean = torch.logsumexp(F.log_softmax(member_logits / T, dim=-1), dim=0) - math.log(len(member_logits))
    return T * log_mean
