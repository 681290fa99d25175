import numpy as np
import pytest
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


@pytest.mark.slow
def test_eval_scores_only_the_chosen_sets(tmp_path):
    from vegan.config import load_config
    from vegan.manifest import Manifest
    from vegan.pipeline import run_pipeline
    from vegan.storage import Storage

    small = ["ae.steps=40", "ot.max_iter=30", "gan.steps=10", "eval.n_samples=128", "generate.n_samples=128"]
    cfg = load_config("tiny", overrides=small + ["eval.sets=[ae-ot, reconstructions]"])
    run_pipeline(cfg, Storage(str(tmp_path)), progress=False)
    st = Storage(str(tmp_path))
    metrics = st.sub(Manifest(st, cfg).output("eval")).read_json("metrics.json")
    assert set(metrics) == {"ae-ot", "reconstructions"}
    bad = load_config("tiny", overrides=small + ["eval.sets=[ae-ot, vae-prior]"])
    with pytest.raises(ValueError, match=r"eval.sets.*vae-prior"):
        run_pipeline(bad, Storage(str(tmp_path)), progress=False)
