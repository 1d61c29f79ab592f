"""Likelihoods ``p(y | f)`` with variational expectations for variational GP models.

Each likelihood defines its log-density and label support; expectations under
``q(f) = N(μ, v)`` come from one shared Gauss–Hermite path (:mod:`natvi.likelihoods.base`)
unless a closed form exists (Gaussian, Poisson, Gamma, heteroskedastic Gaussian; RobustMax by
a 1-D quadrature) or the latent dimension calls for Monte Carlo (Softmax).
"""

from natvi.likelihoods.base import Likelihood, gauss_hermite, quadrature
from natvi.likelihoods.continuous import Beta, Gamma, Gaussian, HeteroskedasticGaussian, StudentT
from natvi.likelihoods.discrete import Bernoulli, Poisson
from natvi.likelihoods.multiclass import RobustMax, Softmax

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
]
