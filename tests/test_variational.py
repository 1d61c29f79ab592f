"""GaussianVariational: parameters named by the parameterisation, q read back exactly."""

from __future__ import annotations

import pytest
import torch

from natvi.parameterizations import BUILTIN
from natvi.variational import GaussianVariational
from tests.gaussians import random_meancov


@pytest.mark.parametrize("cls", BUILTIN, ids=lambda c: c.__name__)
def test_initialised_distribution_is_read_back(cls):
    p = cls()
    m, S = random_meancov((2,), 3, diagonal=p.diagonal)
    q = GaussianVariational(3, (2,), p, mean=m, cov=S)
    assert [n for n, _ in q.named_parameters()] == list(p.names)
    m2, S2 = q.meancov()
    torch.testing.assert_close(m2, m)
    torch.testing.assert_close(S2, S)


def test_default_is_standard_normal_in_default_dtype():
    q = GaussianVariational(4)
    m, S = q.meancov()
    assert m.dtype == torch.get_default_dtype()
    torch.testing.assert_close(S, torch.eye(4))
    torch.testing.assert_close(m, torch.zeros(4))


def test_set_meancov_keeps_parameter_objects():
    q = GaussianVariational(3)
    before = [id(p) for p in q.parameters()]
    m, S = random_meancov((), 3, dtype=torch.float32)
    q.set_meancov(m, S)
    assert [id(p) for p in q.parameters()] == before
    torch.testing.assert_close(q.meancov()[1], S)


def test_bad_size_is_named():
    with pytest.raises(ValueError, match="num_inducing must be a positive integer"):
        GaussianVariational(0)


def test_coordinates_know_their_q_after_copy_pickle_and_dtype_conversion():
    import copy
    import pickle

    from natvi.variational import owner

    q = GaussianVariational(3)
    assert all(owner(x) is q for x in q.xi())
    for other in (copy.deepcopy(q), pickle.loads(pickle.dumps(q)), q.double()):
        assert all(owner(x) is other for x in other.xi())
    assert owner(torch.zeros(2)) is None
