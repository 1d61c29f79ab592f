"""Dually flat manifolds: exponential families with natural ↔ mean maps and closed-form
natural gradients (the natural gradient in θ is the ordinary gradient in μ)."""

from natvi.expfam.base import ExponentialFamily, Params
from natvi.expfam.discrete import Bernoulli, Categorical, Multinomial
from natvi.expfam.gamma import Exponential, Gamma
from natvi.expfam.gaussian import (
    DiagGaussian,
    Gaussian,
    expectation_to_natural,
    meancov_to_natural,
    natural_to_expectation,
    natural_to_meancov,
)
from natvi.expfam.naive_bayes import NaiveBayes
from natvi.expfam.poisson import Poisson

__all__ = [
    "ExponentialFamily",
    "Params",
    "Gaussian",
    "DiagGaussian",
    "natural_to_meancov",
    "meancov_to_natural",
    "natural_to_expectation",
    "expectation_to_natural",
    "Bernoulli",
    "Categorical",
    "Multinomial",
    "Poisson",
    "Gamma",
    "Exponential",
    "NaiveBayes",
]
