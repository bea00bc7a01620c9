"""Specialists (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015,
arXiv 1503.02531, section 5): a generalist plus specialist models for groups of confusable classes.

Each specialist starts as a copy of the generalist whose softmax keeps only its own classes plus one
"dustbin" class for all the others, and is trained on data that is half its own classes. At test time
the specialists whose classes are among the generalist's top-n guesses are combined with it by finding
the distribution q over all classes that minimises KL(p_g || q) + sum_m KL(p_m || collapse_m(q)).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn
from torch.utils.data import TensorDataset

from ..errors import ConfigError, DataError
from ..models.build import ARCH_ATTR
from ..train import TrainConfig, predict
from .bias import class_index, output_layer
from .student import DistillConfig, distill

Classes = Sequence[int] | torch.Tensor


def confusable_groups(probs: torch.Tensor, groups: int, seed: int = 0) -> list[list[int]]:
    """Groups of classes the generalist often predicts together (section 5.2).

    The paper applies "a clustering algorithm to the covariance matrix of the predictions of our
    generalist model": column j of Cov(p) (C, C) says how class j's probability rises and falls with
    every other class's, so k-means on the columns puts classes that share probability mass together.
    The diagonal (each class's own variance) is set to zero first: it sits in a different coordinate
    of every column, so it makes all columns about equally far apart and, on a confident generalist,
    groups classes by how often they are predicted instead of by which are predicted together. Groups
    of one class (a specialist for one class is pointless) or of all classes (that is the generalist)
    are dropped. probs: (N, C) predicted probabilities.
    """
    if probs.dim() != 2 or len(probs) < 2 or not torch.isfinite(probs).all():
        raise DataError(f"probs must be finite (N >= 2, classes), got shape {tuple(probs.shape)}")
    num_classes = probs.shape[1]
    if not 1 <= groups <= num_classes:
        raise ConfigError(f"groups must be within 1..{num_classes} (the number of classes), got {groups}")
    cov = torch.cov(probs.double().T).fill_diagonal_(0)  # (C, C)
    labels = KMeans(n_clusters=groups, n_init=10, random_state=seed).fit_predict(cov.numpy())
    clusters = [[c for c in range(num_classes) if labels[c] == g] for g in range(groups)]
    return sorted(c for c in clusters if 2 <= len(c) < num_classes)


def enriched(train: TensorDataset, classes: Classes, seed: int = 0) -> TensorDataset:
    """A specialist's training set: every example of `classes` plus as many drawn at random from the rest.

    "Half its examples coming from its special subset and half sampled at random from the remainder of
    the training set" (section 5.2); when the rest is smaller than the subset, all of it is taken.
    Examples keep their order in `train`; labels are `train.tensors[1]`.
    """
    labels = train.tensors[1]
    index = class_index(classes, int(labels.max()) + 1)
    inside = torch.isin(labels, index)  # (N,)
    own, others = inside.nonzero().squeeze(1), (~inside).nonzero().squeeze(1)
    if len(own) == 0:
        raise DataError(f"the training set has no examples of classes {index.tolist()}")
    order = torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))
    keep = torch.cat([own, others[order[:len(own)]]]).sort().values
    return TensorDataset(*(t[keep] for t in train.tensors))


def make_specialist(generalist: nn.Module, classes: Classes) -> nn.Module:
    """A copy of `generalist` whose output layer has one output per class of `classes` plus a dustbin.

    Section 5.2: specialists are "initialized with the weights of the generalist model" to share its
    feature detectors, and "all of the classes it does not care about" are combined "into a single
    dustbin class". The rows of `classes` are copied, so the specialist starts with the generalist's
    logits for them. The dustbin should start at logsumexp_{j not in S} z_j (then its probability
    is the generalist's total on the other classes); that is not linear in the features, so it gets
    its Jensen lower bound mean_{j not in S} z_j + log K (K other classes), exact when their logits agree.
    The layer is swapped by name, so any nn.Module works; the generalist is not changed.
    """
    specialist = copy.deepcopy(generalist)
    name, old = output_layer(specialist)
    index = class_index(classes, old.out_features)
    rest = _complement(index, old.out_features)
    new = nn.Linear(old.in_features, len(index) + 1, device=old.weight.device, dtype=old.weight.dtype)
    bias = old.bias if old.bias is not None else torch.zeros(old.out_features, device=old.weight.device)
    with torch.no_grad():
        new.weight.copy_(torch.cat([old.weight[index], old.weight[rest].mean(0, keepdim=True)]))  # (S + 1, features)
        new.bias.copy_(torch.cat([bias[index], bias[rest].mean(0, keepdim=True) + math.log(len(rest))]))
    if hasattr(specialist, ARCH_ATTR):
        delattr(specialist, ARCH_ATTR)  # the generalist's rebuild record no longer describes the copy
    if not name:
        return new  # the generalist was the output layer itself
    parent, _, attr = name.rpartition(".")
    setattr(specialist.get_submodule(parent), attr, new)
    return specialist


def collapse(log_probs: torch.Tensor, classes: Classes) -> torch.Tensor:
    """Log-probabilities over `classes` plus a dustbin holding the total of all other classes.

    log_probs (batch, C) -> (batch, S + 1): columns `classes` kept, then log sum_{j not in S} p_j.
    """
    index = class_index(classes, log_probs.shape[1]).to(log_probs.device)
    rest = _complement(index, log_probs.shape[1])
    dustbin = torch.logsumexp(log_probs[:, rest], dim=1, keepdim=True)  # (batch, 1)
    return torch.cat([log_probs[:, index], dustbin], dim=1)


def train_specialist(generalist: nn.Module, train: TensorDataset, classes: Classes, config: TrainConfig,
                     T: float, alpha: float, seed: int = 0) -> nn.Module:
    """A specialist for `classes`, distilled from the generalist on `enriched` data with `kd_loss`.

    Hard labels become specialist indices (other classes -> the dustbin, index S). The teacher logits
    are the generalist's log-probabilities collapsed onto classes + dustbin, [log p_S, log sum_{j not
    in S} p_j]: their softmax is the collapsed generalist distribution, and kd_loss softens them at T
    like any logits. (Collapsing the generalist's distribution at T instead would teach the dustbin
    the logit T log sum_{j not in S} exp(z_j / T), up to (T - 1) log(C - S) above the one that matches
    at T = 1, where the specialist is used; on digits that cost 4-8 points of ensemble accuracy at T = 4.)
    They are computed once, with the generalist in eval mode, and carried in the dataset.
    """
    num_classes = output_layer(generalist)[1].out_features
    index = class_index(classes, num_classes)
    data = enriched(train, index, seed)
    images, labels = data.tensors[:2]
    teacher = collapse(F.log_softmax(predict(generalist, data), dim=1), index)  # (N, S + 1)
    to_specialist = torch.full((num_classes,), len(index), dtype=torch.long)
    to_specialist[index] = torch.arange(len(index))
    specialist = make_specialist(generalist, index)
    distill(specialist, teacher, TensorDataset(images, to_specialist[labels]),
            DistillConfig(temperature=T, alpha=alpha, train=config), desc=f"specialist {index.tolist()}")
    return specialist


def combine(log_pg: torch.Tensor, terms: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
            steps: int = 100) -> torch.Tensor:
    """log q for the q that minimises KL(p_g || q) + sum_m KL(p_m || collapse_m(q)) (section 5.3), per input.

    log_pg: (batch, C) the generalist's log-probabilities. terms: one per specialist, (rows it is active
    for (k,), its classes (S,), its log-probabilities (k, S + 1)). Majorise-minimise steps from q = p_g:
    Jensen's inequality bounds -log sum_{j not in S} q_j by -sum_{j not in S} w_j log(q_j / w_j) with
    w_j = q_j / sum_{j not in S} q_j at the current q, and the bound's minimiser over the simplex is

        q_new = (p_g + sum_m t_m) / (1 + |A|),  t_m = p_m on m's classes, and m's dustbin probability
                                                    spread over the other classes in proportion to q,

    so the objective (convex in q) never increases and no step size is needed; gradient descent on the
    logits stalls where a class must grow from a tiny probability (its gradient is proportional to it).
    An input with no term keeps q = p_g exactly. Works in log space, so no probability underflows to 0.
    """
    num_classes = log_pg.shape[1]
    count = torch.ones(len(log_pg), dtype=log_pg.dtype, device=log_pg.device)  # (batch,) 1 + |A|
    for rows, _, _ in terms:
        count = count.index_add(0, rows, torch.ones_like(rows, dtype=count.dtype))
    prepared = [(rows, classes.to(log_pg.device), _complement(classes, num_classes).to(log_pg.device), log_pm)
                for rows, classes, log_pm in terms]
    log_q = log_pg
    for _ in range(steps):
        log_num = log_pg.clone()  # (batch, C) log of p_g + sum_m t_m
        for rows, classes, rest, log_pm in prepared:
            log_t = torch.empty(len(rows), num_classes, dtype=log_pg.dtype, device=log_pg.device)  # (k, C)
            log_t[:, classes] = log_pm[:, :-1]
            log_rest = log_q[rows][:, rest]  # (k, C - S)
            log_t[:, rest] = log_pm[:, -1:] + log_rest - log_rest.logsumexp(1, keepdim=True)
            log_num[rows] = torch.logaddexp(log_num[rows], log_t)
        log_q = log_num - count.log()[:, None]
    return log_q


class SpecialistEnsemble(nn.Module):
    """A generalist and its specialists, combined as in section 5.3 of Hinton et al. (2015).

    For each input, the active specialists A are those with a class among the generalist's `top_n`
    classes (the paper uses n = 1). The output is log q for the full distribution q that minimises

        KL(p_g || q) + sum_{m in A} KL(p_m || collapse_m(q)),

    collapse_m(q) keeping q's probabilities of m's classes and summing the rest into m's dustbin;
    `combine` finds it in `steps` majorise-minimise steps. Specialists run only on the inputs they are
    active for; an input with none active gets q = p_g exactly. Inference only: the output carries no
    gradient, and works as logits (argmax is the prediction).
    """

    def __init__(self, generalist: nn.Module, specialists: Sequence[nn.Module], groups: Sequence[Classes],
                 top_n: int = 1, steps: int = 100) -> None:
        super().__init__()
        if len(specialists) != len(groups):
            raise ConfigError(f"{len(specialists)} specialists but {len(groups)} class groups")
        if top_n < 1 or steps < 0:
            raise ConfigError(f"need top_n >= 1 and steps >= 0, got top_n={top_n}, steps={steps}")
        num_classes = output_layer(generalist)[1].out_features
        membership = torch.zeros(len(groups), num_classes, dtype=torch.bool)  # (specialists, C)
        for row, classes in zip(membership, groups):
            row[class_index(classes, num_classes)] = True
        self.generalist = generalist
        self.specialists = nn.ModuleList(specialists)
        self.register_buffer("membership", membership)
        self.top_n, self.steps = top_n, steps

    @property
    def groups(self) -> list[list[int]]:
        """Each specialist's classes."""
        return [row.nonzero().squeeze(1).tolist() for row in self.membership]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_pg = F.log_softmax(self.generalist(x), dim=1)  # (batch, C)
        top = log_pg.topk(min(self.top_n, log_pg.shape[1]), dim=1).indices  # (batch, n)
        active = self.membership[:, top].any(-1)  # (specialists, batch)
        terms = [(on.nonzero().squeeze(1), member.nonzero().squeeze(1), F.log_softmax(specialist(x[on]), dim=1))
                 for specialist, member, on in zip(self.specialists, self.membership, active) if on.any()]
        return combine(log_pg, terms, self.steps)


def train_specialists(generalist: nn.Module, train: TensorDataset, groups: int | Sequence[Classes],
                      config: TrainConfig, T: float, alpha: float, top_n: int = 1, seed: int = 0
                      ) -> SpecialistEnsemble:
    """Train one specialist per class group and combine them with the generalist.

    `groups` is a list of class groups, or a number of clusters for `confusable_groups` of the
    generalist's predictions on `train`.
    """
    if isinstance(groups, int):
        groups = confusable_groups(F.softmax(predict(generalist, train), dim=1), groups, seed)
    specialists = [train_specialist(generalist, train, classes, config, T, alpha, seed + i)
                   for i, classes in enumerate(groups)]
    return SpecialistEnsemble(generalist, specialists, groups, top_n)


def _complement(index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The classes not in `index`; at least one is needed for a dustbin."""
    keep = torch.ones(num_classes, dtype=torch.bool, device=index.device)
    keep[index] = False
    if not keep.any():
        raise ConfigError(f"classes {index.tolist()} cover all {num_classes} classes: no dustbin is left")
    return keep.nonzero().squeeze(1)
