"""natvi's one likelihood vocabulary: names ↔ likelihood classes, what their targets are, and
which estimator trains them.

The command line (``--likelihood``), the estimators (:func:`natvi.estimators.make_estimator`) and
the reference models (``models/``) all speak these names; nothing else keeps a list of them.

=================  ============================  ==========  ==================================
name               class                         targets     estimator
=================  ============================  ==========  ==================================
``bernoulli``      :class:`Bernoulli`            binary      ``SparseGPClassifier``
``softmax``        :class:`Softmax`              multiclass  ``SparseGPClassifier``
``robustmax``      :class:`RobustMax`            multiclass  ``SparseGPClassifier``
``gaussian``       :class:`Gaussian`             regression  ``SparseGPRegressor``
``studentt``       :class:`StudentT`             regression  ``SparseGPRegressor``
``poisson``        :class:`Poisson`              counts      ``SparseGPCountRegressor``
``heteroskedastic`` :class:`HeteroskedasticGaussian` regression  (build a model by hand)
``beta``           :class:`Beta`                 regression  (build a model by hand)
``gamma``          :class:`Gamma`                regression  (build a model by hand)
=================  ============================  ==========  ==================================

Example:
    >>> from natvi.likelihoods import by_name, check_targets, name_of
    >>> lik = by_name("studentt", scale=0.3)
    >>> name_of(lik)
    'studentt'
    >>> _ = check_targets("poisson", [0, 3, 1])  # float64 counts; -1 or 0.5 raise ValueError
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from natvi.likelihoods.base import Likelihood
from natvi.likelihoods.continuous import Beta, Gamma, Gaussian, HeteroskedasticGaussian, StudentT
from natvi.likelihoods.discrete import Bernoulli, Poisson
from natvi.likelihoods.multiclass import RobustMax, Softmax

__all__ = ["Entry", "by_name", "names", "name_of", "entry", "check_targets", "trainable_names"]


@dataclass(frozen=True)
class Entry:
    """One name of the vocabulary.

    Attributes:
        name: the name users type (``--likelihood NAME``, ``by_name(NAME)``).
        cls: the likelihood class; ``cls.task`` says what the targets are.
        estimator: the natvi estimator that trains it (``None``: build a model by hand).
    """

    name: str
    cls: type[Likelihood]
    estimator: str | None = None

    @property
    def task(self) -> str:
        return self.cls.task


_ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("bernoulli", Bernoulli, "SparseGPClassifier"),
        Entry("softmax", Softmax, "SparseGPClassifier"),
        Entry("robustmax", RobustMax, "SparseGPClassifier"),
        Entry("gaussian", Gaussian, "SparseGPRegressor"),
        Entry("studentt", StudentT, "SparseGPRegressor"),
        Entry("poisson", Poisson, "SparseGPCountRegressor"),
        Entry("heteroskedastic", HeteroskedasticGaussian),
        Entry("beta", Beta),
        Entry("gamma", Gamma),
    )
}


def names() -> tuple[str, ...]:
    """Every likelihood name, in the order of the table above."""
    return tuple(_ENTRIES)


def trainable_names() -> tuple[str, ...]:
    """The names an estimator (and so ``natvi fit`` / ``natvi compare``) trains."""
    return tuple(n for n, e in _ENTRIES.items() if e.estimator is not None)


def entry(name: str) -> Entry:
    """The :class:`Entry` of ``name``; ``ValueError`` listing the names if it is unknown."""
    try:
        return _ENTRIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown likelihood {name!r}; choose one of {', '.join(_ENTRIES)}."
        ) from None


def by_name(name: str, **params: Any) -> Likelihood:
    """A new likelihood from its name; ``params`` go to its constructor (e.g. ``noise=0.1``,
    ``num_classes=3``)."""
    return entry(name).cls(**params)


def name_of(likelihood: Likelihood | type[Likelihood]) -> str:
    """The name of a likelihood (an instance or a class); ``ValueError`` if it has none."""
    cls = likelihood if isinstance(likelihood, type) else type(likelihood)
    for e in _ENTRIES.values():
        if e.cls is cls:
            return e.name
    raise ValueError(
        f"{cls.__name__} is not in natvi's likelihood vocabulary ({', '.join(_ENTRIES)})."
    )


def check_targets(
    name: str, y: Any, what: str = "y", suggest: str = "the {} likelihood"
) -> np.ndarray:
    """``y`` checked for likelihood ``name`` (see :meth:`Likelihood.check_targets`)."""
    return entry(name).cls.check_targets(y, what, suggest)
