import numpy as np
import pytest
import torch

from vegan.config import DataConfig, EvalConfig
from vegan.evaluation import (
    _gaussian_fit,
    check_extractor,
    code_moments,
    held_out,
    held_out_split,
    make_evaluate_fn,
    row_digests,
    rows_matching,
)
from vegan.metrics.sources import Decoded, ZarrCodes


def test_decode_keeps_vector_outputs_unclamped():
    codes = torch.tensor([[-4.0, 4.0], [2.0, -2.0]])
    assert torch.equal(Decoded(torch.nn.Identity(), codes, (2,), "k", batch=1).rows(0, 2), codes)
    images = Decoded(torch.nn.Unflatten(1, (1, 1, 2)), codes, (1, 1, 2), "k")
    assert images.rows(0, 2).flatten(1).tolist() == [[0.0, 1.0], [1.0, 0.0]]  # images are clamped


def test_gaussian_fit_matches_code_statistics_streamed_over_chunks(tmp_path):
    import zarr

    codes = np.random.default_rng(0).normal([1.0, -2.0], [0.5, 2.0], size=(5000, 2)).astype(np.float32)
    zarr.open_group(str(tmp_path / "c.zarr"), mode="w").create_array("codes", data=codes, chunks=(700, 2))
    mean, cov = code_moments(ZarrCodes(str(tmp_path / "c.zarr")))  # 8 chunks, two passes
    np.testing.assert_allclose(mean, codes.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(codes, rowvar=False), rtol=1e-10)
    fit = _gaussian_fit(mean, cov, 20000, seed=0)
    np.testing.assert_allclose(fit.mean(0), [1.0, -2.0], atol=0.05)
    np.testing.assert_allclose(fit.std(0), [0.5, 2.0], rtol=0.05)


@pytest.mark.slow
def test_eval_scores_only_the_chosen_sets_and_the_standard_protocol(tmp_path):
    from vegan.config import load_config
    from vegan.manifest import Manifest
    from vegan.pipeline import run_pipeline
    from vegan.storage import Storage

    cfg = load_config("tiny", overrides=SMALL + ["eval.sets=[ae-ot, reconstructions]"])
    run_pipeline(cfg, Storage(str(tmp_path)), progress=False)
    st = Storage(str(tmp_path))
    metrics = st.sub(Manifest(st, cfg).output("eval")).read_json("metrics.json")
    assert metrics["protocol"] == "split" and set(metrics["sets"]) == {"ae-ot", "reconstructions"}
    bad = load_config("tiny", overrides=SMALL + ["eval.sets=[ae-ot, vae-prior]"])
    with pytest.raises(ValueError, match=r"eval.sets.*vae-prior"):
        run_pipeline(bad, Storage(str(tmp_path)), progress=False)

    # The standard protocol on the same run: only eval is recomputed (protocol is in its key alone).
    std = load_config("tiny", overrides=SMALL + ["eval.protocol=standard", "eval.diagnostic_samples=64"])
    out = run_pipeline(std, Storage(str(tmp_path)), progress=False)
    assert out["ae"]["reused"] and out["generate"]["reused"] and not out["eval"]["reused"]
    info = out["eval"]
    assert info["protocol"] == "standard" and info["n_reference"] == 360  # all of digits' test split
    m = info["metrics"]
    assert {name: row["n_samples"] for name, row in m.items()} == {
        "floor": 128, "ae-ot": 128, "ae-ot-gan": 128, "reconstructions": 64, "gaussian-fit": 64,
        "gaussian-noise": 64,
    }  # fmt: skip
    assert all(row["n_reference"] == 360 for row in m.values())
    assert m["floor"]["fid"] < m["gaussian-noise"]["fid"]  # real training images beat decoded noise
    eval_dir = Storage(info["report"].rsplit("/", 1)[0])
    on_disk = eval_dir.read_json("metrics.json")
    assert (on_disk["protocol"], on_disk["n_reference"]) == ("standard", 360)
    assert on_disk["sets"]["floor"]["n_samples"] == 128
    text = eval_dir.read_text("report.md")
    assert "**Protocol: standard.** 128 generated images per headline set" in text
    assert "against all 360 test images" in text and "64 images each (fewer images bias FID upwards" in text


# ------------------------------------------------ which data plays which role
def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.contiguous().flatten(1).numpy()}


@pytest.mark.parametrize(
    "n_test, n_samples, n", [(360, 256, 180), (10000, 2000, 2000), (10000, 10000, 5000), (5, 9, 2)]
)
def test_held_out_split_gives_disjoint_reference_and_reconstructed_rows(n_test, n_samples, n):
    split = held_out_split(n_test, n_samples)
    ref, rec = set(split.reference.tolist()), set(split.reconstructed.tolist())
    assert split.n == len(ref) == len(rec) == n
    assert not ref & rec
    assert max(ref | rec) < n_test


def test_standard_protocol_takes_the_whole_test_split_and_refuses_what_cannot_follow_it(tmp_path):
    from vegan.data import load_dataset
    from vegan.evaluation import standard_roles

    data = DataConfig(name="digits", limit=400)
    train = load_dataset(data)
    roles = standard_roles(train, data, EvalConfig(protocol="standard", n_samples=300, diagnostic_samples=50))
    assert roles.n_reference == 360 and roles.n_headline == 300  # the whole test split, not half of it
    assert len(roles.reconstructed) == 50 and len(roles.floor) == 300
    # training images: the test ones are all reference
    assert roles.floor.data is train and roles.reconstructed.data is train
    assert not _rows(roles.reference.rows(0, 360)) & _rows(roles.floor.rows(0, 300))
    with pytest.raises(ValueError, match=r"n_samples=500 training images.*trains on 400"):
        standard_roles(train, data, EvalConfig(protocol="standard", n_samples=500))
    folder = DataConfig(name=str(tmp_path))
    with pytest.raises(ValueError, match=r"named dataset with a test split.*use eval.protocol split"):
        standard_roles(train, folder, EvalConfig(protocol="standard"))


def test_held_out_split_needs_four_examples():
    with pytest.raises(ValueError, match="held-out split has 3 examples"):
        held_out_split(3, 100)


def test_rows_matching_finds_exactly_the_shared_rows():
    from vegan.data import Dataset

    x = Dataset("x", torch.arange(24.0).reshape(6, 4), None, chunk_rows=4)  # two chunks
    probe = Dataset("p", torch.cat([x.data[[4, 1]], torch.full((1, 4), -1.0)]), None)
    found = rows_matching(x, row_digests(probe, np.arange(3)))
    assert sorted(r for rows in found.values() for r in rows) == [1, 4] and len(found) == 2
    assert rows_matching(x, row_digests(Dataset("n", -x.data - 1, None), np.arange(6))) == {}


def test_held_out_rows_of_a_dataset_without_test_split(tmp_path):
    """A .npz has no test split: held-out rows are those beyond the training limit, if any are left,
    less any that duplicates a training row."""
    from vegan.data import load_dataset

    rows = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    rows[15] = rows[2]  # a duplicate of a training row beyond the limit: not held out
    np.savez(tmp_path / "d.npz", x=rows)
    cfg = DataConfig(name=str(tmp_path / "d.npz"), limit=8)
    held = held_out(load_dataset(cfg), cfg, n_samples=100)
    assert held.n_test == 11 and held.n == 5 and held.overlap == 0 and len(held.train_exclude) == 0
    assert held.rows.tolist() == [8, 9, 10, 11, 12, 13, 14, 16, 17, 18]
    everything = cfg.model_copy(update={"limit": 18})  # 2 rows left: too few, fall back to training rows
    held = held_out(load_dataset(everything), everything, 100)
    assert held.n_test == 20 and held.rows.tolist() == list(range(20))
    assert held.overlap == 18  # rows 0-17 are the training rows themselves
    assert held.train_exclude.tolist() == list(range(18))


def test_check_extractor_explains_the_choice_and_refuses_domain_without_labels(tmp_path):
    folder = DataConfig(name="s3://bucket/unlabeled-pngs")
    with pytest.raises(ValueError, match=r"dataset 's3://bucket/unlabeled-pngs': eval.extractor 'domain'.*has none"):
        check_extractor(folder, EvalConfig(extractor="domain"), has_labels=False)
    auto = check_extractor(folder, EvalConfig(), has_labels=False)
    assert auto.name == "vegan-selfsup" and "no labels" in auto.reason
    assert check_extractor(DataConfig(), EvalConfig(), has_labels=True).name == "vegan-domain"
    assert check_extractor(folder, EvalConfig(extractor="domain"), False, is_image=False).name == "grid-metrics"
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match=f"Inception weights file not found: {missing}"):
        check_extractor(DataConfig(), EvalConfig(extractor="inception-tf", inception_path=str(missing)), True)
    with pytest.raises(ValueError, match="unknown feature extractor"):
        check_extractor(DataConfig(), EvalConfig(extractor="inceptoin"), True)


SMALL = ["ae.steps=40", "ot.max_iter=30", "gan.steps=10", "eval.n_samples=128", "generate.n_samples=128"]


@pytest.mark.slow
def test_domain_metrics_never_see_the_reference(tmp_path, monkeypatch):
    """Spies on the real run: what the classifier trains on, what is reconstructed, what the reference is."""
    import vegan.evaluation as evaluation
    from vegan.config import load_config
    from vegan.data import load_dataset
    from vegan.metrics import classifiers, fidelity
    from vegan.pipeline import run_pipeline
    from vegan.storage import Storage

    seen: dict[str, torch.Tensor] = {}
    take = classifiers.TrainingRows.take

    def spy_take(self, *args, **kwargs):  # the rows the classifier trains (and validates) on
        x, y = take(self, *args, **kwargs)
        seen["classifier"] = x
        return x, y

    monkeypatch.setattr(classifiers.TrainingRows, "take", spy_take)
    for module, name, arg in ((fidelity, "reference_features", "reference"),
                              (evaluation, "sample_sets", "reconstructed")):  # fmt: skip
        real = getattr(module, name)

        def spy(*args, _real=real, _arg=arg, **kwargs):
            source = args[1] if _arg == "reconstructed" else args[0]
            seen[_arg] = source.rows(0, len(source))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    cfg = load_config("tiny", overrides=SMALL)
    info = run_pipeline(cfg, Storage(str(tmp_path)), progress=False)["eval"]
    train = load_dataset(cfg.data).data
    classifier, reference, reconstructed = (_rows(seen[k]) for k in ("classifier", "reference", "reconstructed"))
    assert len(reference) == len(reconstructed) == info["n_reference"] == 128
    assert classifier <= _rows(train)  # trained on the training split...
    assert not classifier & reference  # ...which holds no reference image
    assert not reconstructed & reference and not reconstructed & _rows(train)
    assert info["extractor"] == "vegan-domain"
    text = Storage(info["report"].rsplit("/", 1)[0]).read_text("report.md")
    assert "## Evaluation protocol" in text and "auto: the training data has labels" in text
    assert "none of them held-out examples" in text and "Caution" not in text


@pytest.mark.slow
def test_unlabeled_image_folder_runs_end_to_end_with_the_defaults(tmp_path):
    """A folder of PNGs (no labels) with the tiny preset: auto picks the label-free extractor."""
    from PIL import Image

    from vegan.config import load_config
    from vegan.data import load_dataset
    from vegan.pipeline import run_pipeline
    from vegan.storage import Storage

    digits = load_dataset(DataConfig(name="digits")).data[:600]
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(digits):
        Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8)).save(folder / f"{i:04d}.png")
    cfg = load_config("tiny", overrides=SMALL + [f"data.name={folder}"])
    assert cfg.eval.extractor == "auto" and cfg.data.limit == 512
    info = run_pipeline(cfg, Storage(str(tmp_path / "run")), progress=False)["eval"]
    assert info["extractor"] == "vegan-selfsup"
    assert info["n_reference"] == 44  # the 88 images beyond the training limit, halved
    assert set(info["metrics"]) >= {"reconstructions", "ae-ot", "ae-ot-gan"}
    assert all(np.isfinite(m["fid"]) for m in info["metrics"].values())
    text = Storage(info["report"].rsplit("/", 1)[0]).read_text("report.md")
    assert "`vegan-selfsup` (auto: the training data has no labels" in text and "Caution" not in text


def test_make_evaluate_fn_scores_against_the_test_split_with_a_train_split_extractor(tmp_path):
    from vegan.data import load_dataset
    from vegan.storage import Storage

    data = DataConfig(name="digits", limit=400)
    fn = make_evaluate_fn(data, EvalConfig(n_samples=100, domain_steps=40, kid_subset_size=50),
                          cache=Storage(str(tmp_path)))  # fmt: skip
    train = load_dataset(data).data
    noise = torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    m = fn({"train": train[:100], "noise": noise})
    assert m["noise"]["fid"] > 3 * m["train"]["fid"]
    (weights,) = (tmp_path / "domain-classifier").glob("*.pt")  # trained once, on the training split


@pytest.mark.parametrize("model", ["vae", "wgan-gp"])
def test_model_sampler_decoded_by_chunk_is_model_sample(model):
    """The model-sampler set draws the prior codes of ``model.sample`` (batches of 512) and decodes them
    chunk by chunk, possibly on a worker: the same images as sampling in one process."""
    from vegan.config import AEConfig
    from vegan.models import build_model

    net = build_model(AEConfig(model=model, latent_dim=4, width=8), (1, 8, 8)).eval()
    n = 600  # two batches of prior draws
    draws = torch.Generator().manual_seed(3)
    z = torch.cat([net.prior_sample(min(512, n - i), draws) for i in range(0, n, 512)])
    g = torch.Generator().manual_seed(3)
    whole = torch.cat([net.sample(min(512, n - i), generator=g) for i in range(0, n, 512)]).clamp(0, 1)
    chunked = Decoded(net, z, (1, 8, 8), "k", method="decode")
    torch.testing.assert_close(torch.cat([chunked.rows(0, 100), chunked.rows(100, n)]), whole)
