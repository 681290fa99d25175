import numpy as np
import torch

from vegan.evaluation import _decode, _gaussian_fit


def test_decode_keeps_vector_outputs_unclamped():
    codes = torch.tensor([[-4.0, 4.0], [2.0, -2.0]])
    assert torch.equal(_decode(torch.nn.Identity(), codes, batch=1), codes)


def test_gaussian_fit_matches_code_statistics():
    codes = np.random.default_rng(0).normal([1.0, -2.0], [0.5, 2.0], size=(5000, 2)).astype(np.float32)
    fit = _gaussian_fit(codes, 20000, seed=0)
    np.testing.assert_allclose(fit.mean(0), [1.0, -2.0], atol=0.05)
    np.testing.assert_allclose(fit.std(0), [0.5, 2.0], rtol=0.05)
