"""Optimizers, gradient clipping and learning-rate schedules.

Optimizer state uses PyTorch's names (``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``,
``square_avg``, ``sum``); each statistic is a FlatParams shaped like the parameters, so a
checkpoint stores it per parameter as ``optim.<statistic>.<parameter name>``.
"""
from __future__ import annotations

import math

from charlstm.training.config import STATISTICS, TrainConfig
from charlstm.kernels import optim as kernels
from charlstm.model.parameters import FlatParams

# Defaults of torch.optim for each optimizer.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 1e-8
ADAGRAD_EPS = 1e-10


class Optimizer:
    """Updates a FlatParams in place from a gradient FlatParams of the same layout."""

    def __init__(self, config: TrainConfig, params: FlatParams):
        self.name = config.optimizer
        self.momentum = config.momentum
        self.weight_decay = config.weight_decay
        self.params = params
        self.step = 0
        self.state = {stat: params.zeros_like() for stat in STATISTICS[self.name]}

    def update(self, grads: FlatParams, lr: float) -> None:
        self.step += 1
        p, g = self.params.flat, grads.flat
        s = {k: v.flat for k, v in self.state.items()}
        if self.weight_decay > 0:
            # Decoupled decay, before the update and independent of the gradient, as
            # torch.optim.AdamW (and as SGDW for the other optimizers).
            kernels.scale_inplace(p, 1.0 - lr * self.weight_decay)
        if self.name == "adam":
            kernels.adam_update(p, g, s["exp_avg"], s["exp_avg_sq"], lr, ADAM_BETAS[0],
                                ADAM_BETAS[1], ADAM_EPS, self.step)
        elif self.name == "sgd":
            kernels.sgd_update(p, g, s["momentum_buffer"], lr, self.momentum)
        elif self.name == "rmsprop":
            kernels.rmsprop_update(p, g, s["square_avg"], lr, RMSPROP_ALPHA, RMSPROP_EPS)
        else:
            kernels.adagrad_update(p, g, s["sum"], lr, ADAGRAD_EPS)


def grad_norm(grads: FlatParams) -> float:
    return math.sqrt(kernels.sum_of_squares(grads.flat))


def clip_grad_norm(grads: FlatParams, max_norm: float) -> float:
    """Scale gradients so their global L2 norm is at most ``max_norm`` (0 disables),
    as ``torch.nn.utils.clip_grad_norm_``; returns the norm before clipping."""
    norm = grad_norm(grads)
    if max_norm > 0:
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            kernels.scale_inplace(grads.flat, coef)
    return norm


def learning_rate(config: TrainConfig, step: int, horizon: int, steps_per_epoch: int,
                  elapsed: float | None = None) -> float:
    """The learning rate of 0-based ``step``, ``elapsed`` seconds into the run's training.

    Warmup ramps linearly over the first ``config.warmup`` steps; after it, 'cosine'
    anneals from lr to lr_min over ``horizon`` steps (then stays at lr_min), or, with no
    step horizon, over config.lr_horizon_time seconds of training (a --time budget), and
    'step' multiplies by lr_decay every lr_decay_every steps (default one epoch). The
    cosine is that of SGDR (Loshchilov & Hutter 2017) without restarts.
    """
    base = config.lr
    progress = None
    if config.lr_schedule == "cosine" and horizon > 0:
        progress = min(step / horizon, 1.0)
    elif config.lr_schedule == "cosine" and config.lr_horizon_time > 0 and elapsed is not None:
        progress = min(elapsed / config.lr_horizon_time, 1.0)
    if progress is not None:
        base = config.lr_min + 0.5 * (config.lr - config.lr_min) * (1.0 + math.cos(math.pi * progress))
    elif config.lr_schedule == "step":
        every = config.lr_decay_every or steps_per_epoch
        base = config.lr * config.lr_decay ** (step // max(every, 1))
    if config.warmup > 0 and step < config.warmup:
        base *= (step + 1) / config.warmup
    return float(base)
