"""Optimisers: natural gradients for variational Gaussians, exponential families and torch
models; step-size schedules; safeguards. Each module re-exports its public names here."""

from natvi.optim import safeguards, schedules
from natvi.optim.dsngd import DSNGD, SNGD, mlr_logits
from natvi.optim.lbfgs import AlternatingLBFGS
from natvi.optim.mirror import MirrorDescent
from natvi.optim.natural_gradient import NaturalGradient
from natvi.optim.ngd import NGD
from natvi.optim.preconditioner import FisherPreconditioner
from natvi.optim.safeguards import Backoff, Riemannian, SafeguardWarning, Strict
from natvi.optim.schedules import Constant, Decay, LogLinearWarmup

__all__: list[str] = [
    "NaturalGradient",
    "AlternatingLBFGS",
    "NGD",
    "FisherPreconditioner",
    "schedules",
    "safeguards",
    "Constant",
    "LogLinearWarmup",
    "Decay",
    "Backoff",
    "Riemannian",
    "Strict",
    "SafeguardWarning",
    "MirrorDescent",
    "DSNGD",
    "SNGD",
    "mlr_logits",
]
