"""Evaluation metrics: FID/KID/PR/density/coverage, extractors, reference caching, grid metrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from vegan.cluster import local_cluster
from vegan.config import DataConfig, EvalConfig
from vegan.data import GRID_MEANS, GRID_STD, DatasetError, load_dataset
from vegan.metrics import (
    InceptionWeightsError,
    default_inception_path,
    evaluate_sets,
    extract_features,
    feature_space,
    fidelity,
    grid_metrics,
    prdc,
    reference_features,
    tensor_hash,
)
from vegan.metrics import classifiers as clf
from vegan.metrics import inception as inc
from vegan.metrics import registry as reg
from vegan.metrics.fidelity import compare_features
from vegan.storage import Storage

# Small, fast domain classifier for tests (the default trains for 300 steps).
FAST = dict(extractor="domain", domain_steps=60, domain_max_examples=1000, kid_subset_size=50)


def _mnist(split: str, limit: int):
    try:
        return load_dataset(DataConfig(name="mnist", split=split, limit=limit))
    except DatasetError as exc:
        pytest.skip(f"MNIST not available: {exc}")


def _fashion(limit: int) -> torch.Tensor:
    """Real Fashion-MNIST test images. No stand-in: without the dataset the test skips and says
    why (a failure under VEGAN_STRICT_SKIPS=1); `scripts/setup_system.sh` installs it."""
    try:
        return load_dataset(DataConfig(name="fashion-mnist", split="test", limit=limit)).data
    except DatasetError as exc:
        pytest.skip(f"Fashion-MNIST not available (run scripts/setup_system.sh): {exc}")


@pytest.fixture(scope="module")
def mnist_test():
    return _mnist("test", 600)


@pytest.fixture(scope="module")
def mnist_train():
    """What the trained extractors learn from: the training split, disjoint from every reference here."""
    return _mnist("train", 1000)


def _frechet_scipy(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # dead ReLU units / few samples make covariances singular
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


# ------------------------------------------------------------- grid metrics
def _grid_samples(n: int, modes, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.choice(modes, size=n)
    return GRID_MEANS[idx] + GRID_STD * rng.standard_normal((n, 2))


def test_grid_metrics_perfect_samples():
    m = grid_metrics(_grid_samples(5000, np.arange(25)))
    assert m["modes_covered"] == 25 and m["modes_covered_strict"] == 25 and m["n_modes"] == 25
    assert m["high_quality"] > 0.97  # 1 - exp(-9/2) = 98.9% of a 2-D Gaussian lies within 3 std
    assert m["reverse_kl"] < 0.01
    assert sum(m["mode_counts"]) == round(m["high_quality"] * 5000)


def test_grid_metrics_collapsed_samples():
    m = grid_metrics(_grid_samples(2000, [0, 6, 12, 18, 24]))
    assert m["modes_covered"] == 5
    assert m["reverse_kl"] == pytest.approx(math.log(5), abs=0.01)
    assert grid_metrics(np.zeros((10, 2)) + 1.0)["high_quality"] == 0.0  # between modes: no quality


def test_grid_metrics_strict_variant_ignores_stray_points():
    x = np.concatenate([GRID_MEANS, np.repeat(GRID_MEANS[:1], 975, axis=0)])  # one point on 24 modes
    m = grid_metrics(x)
    assert m["modes_covered"] == 25
    assert m["strict_min_count"] == 4 and m["modes_covered_strict"] == 1


def test_grid_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        grid_metrics(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        grid_metrics(np.full((5, 2), np.nan))


# --------------------------------------------------------------------- prdc
def test_prdc_matches_torch_fidelity_precision_recall():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(300, 16, generator=g), torch.randn(250, 16, generator=g) * 1.3 + 0.2
    ours = prdc(real, fake, k=3, chunk=64)  # several chunks
    precision, recall = calculate_precision_recall_full(fake, real, neighborhood=3)
    assert ours["precision"] == pytest.approx(precision) and ours["recall"] == pytest.approx(recall)
    assert 0 < ours["coverage"] < 1 and ours["density"] > 0


def test_prdc_extremes():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(200, 8, generator=g)
    same = prdc(real, real.clone(), k=5)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    far = prdc(real, real + 100, k=5)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    # Collapse onto a few real points: precision stays 1, coverage drops.
    collapsed = prdc(real, real[:5].repeat(40, 1), k=5)
    assert collapsed["precision"] == 1.0 and collapsed["coverage"] < 0.2


# ---------------------------------------------------------- domain extractor
def test_domain_classifier_fid_kid_pr_and_is(mnist_test, mnist_train, tmp_path):
    real, other = mnist_test.data[:300], mnist_test.data[300:600]
    cfg = EvalConfig(n_samples=300, **FAST)
    m = evaluate_sets(
        real, {"mnist": other, "fashion": _fashion(300), "collapsed": real[:10].repeat(30, 1, 1, 1)}, cfg,
        cache=Storage(str(tmp_path)), train=mnist_train.data, train_labels=mnist_train.labels, progress=False,
    )  # fmt: skip
    assert set(m) == {"mnist", "fashion", "collapsed"}
    expected = {"fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "is_mean", "is_std"}
    assert expected <= set(m["mnist"])
    assert m["fashion"]["fid"] > 5 * m["mnist"]["fid"]
    assert m["fashion"]["kid_mean"] > 5 * m["mnist"]["kid_mean"]
    assert m["mnist"]["precision"] > m["fashion"]["precision"]
    assert m["collapsed"]["coverage"] < m["mnist"]["coverage"]
    assert m["mnist"]["is_mean"] >= 1.0


def test_our_fid_equals_scipy_frechet_on_same_features(mnist_test, mnist_train):
    cfg = EvalConfig(n_samples=300, **FAST)
    space = feature_space(cfg, mnist_train.data, mnist_train.labels)
    fa = extract_features(mnist_test.data[:300], space, batch_size=128)
    fb = extract_features(_fashion(300), space, batch_size=128)
    ours = compare_features(fa, fb, space, cfg)["fid"]
    ref = _frechet_scipy(fa[space.layer].double().numpy(), fb[space.layer].double().numpy())
    assert ours == pytest.approx(ref, rel=1e-3)


def test_same_names_work_through_torch_fidelity_calculate_metrics(mnist_test, mnist_train, tmp_path):
    """The registered extractor (here: the cached classifier file) is usable from torch-fidelity's own entry point."""
    import torch_fidelity

    class Uint8Set(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return (self.x[i] * 255).round().to(torch.uint8).expand(3, -1, -1)

    cfg = EvalConfig(n_samples=200, **FAST)
    real, gen = mnist_test.data[:200], _fashion(200)
    cache = Storage(str(tmp_path))
    ours = evaluate_sets(real, {"g": gen}, cfg, cache=cache, train=mnist_train.data, train_labels=mnist_train.labels,
                         progress=False)["g"]  # fmt: skip
    (weights,) = (tmp_path / "domain-classifier").glob("*.pt")
    theirs = torch_fidelity.calculate_metrics(
        input1=Uint8Set(gen), input2=Uint8Set(real), feature_extractor="vegan-domain",
        feature_extractor_weights_path=str(weights),
        fid=True, prc=True, cuda=False, cache=False, verbose=False, save_cpu_ram=True,
    )  # fmt: skip
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-4)
    assert ours["precision"] == pytest.approx(theirs["precision"])


def test_domain_extractor_needs_labels_and_training_data(mnist_test, mnist_train):
    real, sets = mnist_test.data[:50], {"g": mnist_test.data[50:100]}
    with pytest.raises(ValueError, match="labels"):
        evaluate_sets(real, sets, EvalConfig(**FAST), train=mnist_train.data, progress=False)
    with pytest.raises(ValueError, match="disjoint from the reference set: pass train="):
        evaluate_sets(real, sets, EvalConfig(**FAST), train_labels=mnist_train.labels, progress=False)


def test_auto_picks_domain_with_labels_and_selfsup_without():
    assert reg.choose_extractor("auto", has_labels=True)[0] == reg.DOMAIN
    name, why = reg.choose_extractor("auto", has_labels=False)
    assert name == reg.SELFSUP and "no labels" in why
    assert reg.choose_extractor("selfsup", has_labels=True)[0] == reg.SELFSUP
    with pytest.raises(ValueError, match="has none.*'auto' or 'selfsup'"):
        reg.choose_extractor("domain", has_labels=False)
    with pytest.raises(ValueError, match="unknown feature extractor 'dommain'"):
        reg.choose_extractor("dommain", has_labels=True)


def test_rotation_classifier_learns_without_labels(mnist_train):
    model, acc = clf.train_domain_classifier(mnist_train.data, None, steps=150, task="rotation")
    assert model.spec["n_classes"] == 4 and acc > 0.6  # chance is 0.25
    assert clf.rotations_for((3, 32, 24)) == (0, 2)  # non-square: half turns only
    x = torch.arange(2 * 6.0).reshape(2, 1, 2, 3)
    assert torch.equal(clf._rotate(x, torch.tensor([0, 1]), (0, 2)), torch.stack([x[0], x[1].flip(1, 2)]))


def test_selfsup_features_separate_datasets_without_labels(mnist_test, mnist_train, tmp_path):
    """The label-free extractor still tells MNIST from Fashion-MNIST and a collapsed set from a diverse one."""
    real, other = mnist_test.data[:300], mnist_test.data[300:600]
    cfg = EvalConfig(n_samples=300, **{**FAST, "extractor": "auto"})
    m = evaluate_sets(
        real, {"mnist": other, "fashion": _fashion(300), "collapsed": real[:10].repeat(30, 1, 1, 1)}, cfg,
        cache=Storage(str(tmp_path)), train=mnist_train.data, progress=False,
    )  # fmt: skip
    assert "is_mean" not in m["mnist"]  # rotation logits are no class scores: no Inception Score
    assert m["fashion"]["fid"] > 5 * m["mnist"]["fid"]
    assert m["mnist"]["precision"] > m["fashion"]["precision"]
    assert m["collapsed"]["coverage"] < m["mnist"]["coverage"]


def test_vectors_with_domain_mlp():
    grid = load_dataset(DataConfig(name="grid2d", limit=1500))
    real, train, labels = grid.data[:500], grid.data[500:], grid.labels[500:]
    good = torch.from_numpy(_grid_samples(500, np.arange(25), seed=3)).float()
    collapsed = torch.from_numpy(_grid_samples(500, [0, 12, 24], seed=4)).float()
    m = evaluate_sets(real, {"good": good, "collapsed": collapsed}, EvalConfig(n_samples=500, **FAST),
                      train=train, train_labels=labels, progress=False)  # fmt: skip
    assert m["collapsed"]["fid"] > 5 * m["good"]["fid"]
    assert m["collapsed"]["coverage"] < 0.3 < m["good"]["coverage"]


def test_set_shape_mismatch_is_an_error(mnist_test, mnist_train):
    with pytest.raises(ValueError, match="shape"):
        evaluate_sets(mnist_test.data[:50], {"g": torch.rand(50, 3, 28, 28)}, EvalConfig(n_samples=50, **FAST),
                      train=mnist_train.data, train_labels=mnist_train.labels, progress=False)  # fmt: skip


# ------------------------------------------------------ reference-stat cache
def test_reference_features_cached_by_content_hash(mnist_test, mnist_train, tmp_path, monkeypatch):
    cache = Storage(str(tmp_path))
    cfg = EvalConfig(n_samples=200, batch_size=100, **FAST)
    real, labels, gen = mnist_test.data[:200], mnist_test.labels[:200], mnist_test.data[200:400]
    fit = dict(train=mnist_train.data, train_labels=mnist_train.labels)
    calls = []
    forward = clf.DomainFeatureExtractor.forward
    monkeypatch.setattr(clf.DomainFeatureExtractor, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))

    first = evaluate_sets(real, {"g": gen}, cfg, cache=cache, progress=False, **fit)
    assert sum(calls) == 400  # reference + generated set
    calls.clear()
    monkeypatch.setattr(clf, "train_domain_classifier", lambda *a, **k: pytest.fail("classifier not cached"))
    again = evaluate_sets(real, {"g": gen}, cfg, cache=cache, progress=False, **fit)
    assert sum(calls) == 200  # generated set only: reference loaded
    assert again == first

    # Same name, same shape, one changed pixel: a new hash, so nothing stale is reused.
    changed = real.clone()
    changed[0, 0, 0, 0] = 1 - changed[0, 0, 0, 0]
    assert tensor_hash(changed, labels) != tensor_hash(real, labels)
    space = feature_space(cfg, cache=cache, **fit)
    _, hit = reference_features(real, space, tensor_hash(real) + "-n200", cache)
    _, miss = reference_features(changed, space, tensor_hash(changed, labels) + "-n200", cache)
    assert hit and not miss


# -------------------------------------------------------- inception (TF FID)
def test_inception_missing_weights_names_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "nope" / "inception.pt"
    cfg = EvalConfig(extractor="inception-tf", inception_path=str(missing), n_samples=4)
    with pytest.raises(InceptionWeightsError, match=str(missing)):
        evaluate_sets(torch.rand(4, 1, 28, 28), {"g": torch.rand(4, 1, 28, 28)}, cfg, progress=False)
    monkeypatch.setenv("VEGAN_INCEPTION_PATH", str(missing))
    assert default_inception_path() == missing
    with pytest.raises(InceptionWeightsError, match=str(missing)):
        inc.load_inception()


def test_inception_corrupt_weights_names_the_path(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"PK\x03\x04 this is not a TorchScript archive")
    with pytest.raises(InceptionWeightsError, match="corrupt") as err:
        inc.load_inception(bad)
    assert str(bad) in str(err.value)


@pytest.fixture(scope="module")
def inception_available():
    try:
        inc.load_inception()
    except InceptionWeightsError as exc:
        pytest.skip(str(exc))


def test_inception_features_shape_and_grayscale_handling(inception_available):
    cfg = EvalConfig(extractor="inception-tf")
    space = feature_space(cfg)
    assert space.layer == "2048" and space.isc_layer is None  # no logits in the graph: no Inception Score
    gray = torch.rand(3, 1, 20, 20)
    f_gray = extract_features(gray, space, batch_size=2)["2048"]  # two chunks
    f_rgb = extract_features(gray.expand(-1, 3, -1, -1), space)["2048"]
    assert f_gray.shape == (3, 2048) and (f_gray >= 0).all()  # average-pooled ReLU activations
    torch.testing.assert_close(f_gray, f_rgb)


@pytest.mark.slow
def test_inception_fid_self_zero_and_mnist_vs_fashion(inception_available, mnist_test, tmp_path):
    """TF-Inception FID: a set against itself ~0; Fashion-MNIST far from MNIST (20 images each)."""
    n = 20
    real, other, fashion = mnist_test.data[:n], mnist_test.data[n : 2 * n], _fashion(n)
    cfg = EvalConfig(extractor="inception-tf", n_samples=n, batch_size=10, kid_subset_size=n)
    cache = Storage(str(tmp_path))
    m = evaluate_sets(real, {"same": real, "mnist": other, "fashion": fashion}, cfg, cache=cache, progress=False)
    assert abs(m["same"]["fid"]) < 1e-2 * m["mnist"]["fid"]
    assert m["same"]["precision"] == m["same"]["recall"] == m["same"]["coverage"] == 1.0
    assert m["fashion"]["fid"] > 1.5 * m["mnist"]["fid"]
    assert m["fashion"]["kid_mean"] > 2 * m["mnist"]["kid_mean"]
    space = feature_space(cfg)
    _, hit = reference_features(real, space, tensor_hash(real) + f"-n{n}", cache)
    assert hit  # keyed by content hash and weights digest, reused without a reference pass


@pytest.mark.slow
def test_extraction_on_dask_workers_matches_local(mnist_test, mnist_train):
    distributed = pytest.importorskip("distributed")
    cfg = EvalConfig(n_samples=200, **FAST)
    space = feature_space(cfg, mnist_train.data, mnist_train.labels)
    local = extract_features(mnist_test.data[:200], space, batch_size=64)
    with local_cluster(2) as lc:
        with distributed.Client(lc) as client:
            remote = extract_features(mnist_test.data[:200], space, batch_size=64, client=client)
    for layer in space.layers:
        torch.testing.assert_close(remote[layer], local[layer])


def test_download_failure_of_torch_fidelity_extractor_points_to_offline_options(monkeypatch):
    """inception-v3-compat stays selectable by name; offline, the error says what to use instead."""
    import urllib.error

    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tfi, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match="inception-tf"):
        feature_space(EvalConfig(extractor="inception-v3-compat"))


# ------------------------------------------------ inception speed-ups (issue 15)
def test_matmul_resize_matches_tensorflow_gather_resize():
    """The separable matrix resize is TF1's bilinear resize, rounding aside, for any input size. The gather
    version computes sampling positions in float32 (position error up to ~3e-5 pixel at 299 columns), ours in
    float64: 1e-2 on the 0-255 scale bounds both roundings."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    g = torch.Generator().manual_seed(0)
    for h, w in ((28, 28), (8, 8), (32, 20), (299, 299), (400, 300)):
        x = torch.randint(0, 256, (2, 3, h, w), generator=g).float()
        exact = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
        torch.testing.assert_close(inc.resize_tf1(x, 299, "matmul"), exact, atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="unknown resize method 'cubic'"):
        inc.resize_tf1(x, 299, "cubic")


def test_precision_resolution_follows_the_cpu(monkeypatch):
    fast, why = inc.cpu_has_fast_bf16()
    assert inc.resolve_precision("auto", "cpu")[0] == ("bf16" if fast else "float32")
    assert why in inc.resolve_precision("auto", "cpu")[1]  # the reason is visible in FeatureSpace.info
    assert inc.resolve_precision("float32", "cpu")[0] == "float32"
    assert inc.resolve_precision("auto", "cuda")[0] == "float32"  # GPUs: exact path
    monkeypatch.setattr(inc, "cpu_has_fast_bf16", lambda: (False, "no native bf16 here"))
    assert inc.resolve_precision("auto", "cpu") == ("float32", "auto: float32 because no native bf16 here")
    assert inc.resolve_precision("bf16", "cpu")[0] == "bf16"  # forced: honoured, with a warning
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        inc.resolve_precision("fp8")
    with pytest.raises(ValueError, match="precision"):
        EvalConfig(precision="fp8")


def test_fast_inception_paths_agree_with_the_exact_path(inception_available, mnist_test):
    """Tolerances: matmul resize + channels-last change only rounding (relative feature error < 1e-4);
    bf16 autocast changes features by ~2 % (measured 1.5-2.1 %; < 5 % asserted), which moves FID by
    far less than 0.5 % on the benchmark sets (benchmarks/fid_speed.py)."""
    x = mnist_test.data[:4]
    feats = {}
    for name, kwargs in {"exact": {}, "fast-float32": dict(resize="matmul", channels_last=True),
                         "bf16": dict(resize="matmul", channels_last=True, precision="bf16")}.items():  # fmt: skip
        extractor = inc.InceptionTFOffline(reg.INCEPTION_TF_OFFLINE, ["2048"], **kwargs)
        with torch.no_grad():
            (feats[name],) = extractor(fidelity.to_extractor_input(x))
    exact = feats["exact"]

    def rel(f):
        return float((f - exact).norm() / exact.norm())

    assert x.shape == (4, 1, 28, 28) and exact.shape == (4, 2048)
    assert rel(feats["fast-float32"]) < 1e-4
    assert 0 < rel(feats["bf16"]) < 0.05
    assert torch.nn.functional.cosine_similarity(feats["bf16"], exact).min() > 0.998


@pytest.mark.slow  # ~75 s on 2 busy cores: two FIDs of 2048-d features (sqrtm), not the 16 images
def test_inception_reference_and_set_features_cached_per_precision(inception_available, mnist_test, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    """The second evaluation runs no image through Inception: the reference and the set come from the cache;
    bf16 and float32 features live under different keys, so neither is ever served for the other."""
    n = 8
    real, gen = mnist_test.data[:n], mnist_test.data[n : 2 * n]
    cfg = EvalConfig(extractor="inception-tf", n_samples=n, batch_size=n, kid_subset_size=n, precision="auto")
    cache = Storage(str(tmp_path))
    calls = []
    forward = inc.InceptionTFOffline.forward
    monkeypatch.setattr(inc.InceptionTFOffline, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    first = evaluate_sets(real, {"g": gen}, cfg, cache=cache, progress=False)
    assert sum(calls) == 2 * n
    calls.clear()
    again = evaluate_sets(real, {"g": gen}, cfg, cache=cache, progress=False)
    assert sum(calls) == 0 and again == first
    spaces = {p: feature_space(cfg.model_copy(update={"precision": p})) for p in ("float32", "bf16")}
    assert spaces["float32"].fingerprint != spaces["bf16"].fingerprint
    assert spaces["bf16"].fingerprint.endswith("-bf16") and spaces["bf16"].info["precision"] == "bf16"
    _, hit = reference_features(real, spaces[feature_space(cfg).info["precision"]], tensor_hash(real) + f"-n{n}",
                                cache)  # fmt: skip
    assert hit and sum(calls) == 0
