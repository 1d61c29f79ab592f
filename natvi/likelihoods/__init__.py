"""Likelihoods ``p(y | f)`` with variational expectations for variational GP models.

Each likelihood defines its log-density and label support; expectations under
``q(f) = N(μ, v)`` come from one shared Gauss–Hermite path (:mod:`natvi.likelihoods.base`)
unless a closed form exists (Gaussian, Poisson, Gamma, heteroskedastic Gaussian; RobustMax by
a 1-D quadrature) or the latent dimension calls for Monte Carlo (Softmax).

Each has a name (:mod:`natvi.likelihoods.registry`: ``by_name("poisson")``, ``name_of(lik)``,
``names()``), the vocabulary of the command line, the estimators and ``models/``, and states
what its targets may be once (``Likelihood.check_targets`` for a user's raw targets,
``check_y`` for encoded ones).
"""

from natvi.likelihoods.base import Likelihood, gauss_hermite, quadrature
from natvi.likelihoods.continuous import Beta, Gamma, Gaussian, HeteroskedasticGaussian, StudentT
from natvi.likelihoods.discrete import Bernoulli, Poisson
from natvi.likelihoods.multiclass import RobustMax, Softmax
from natvi.likelihoods.registry import by_name, check_targets, name_of, names

__all__ = [
    "Likelihood",
    "gauss_hermite",
    "quadrature",
    "Gaussian",
    "StudentT",
    "HeteroskedasticGaussian",
    "Beta",
    "Gamma",
    "Bernoulli",
    "Poisson",
    "Softmax",
    "RobustMax",
    "by_name",
    "names",
    "name_of",
    "check_targets",
]
