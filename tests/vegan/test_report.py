"""Report writers: PNG grids and plots, report.md and metrics.json, through Storage."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vegan import report
from vegan.config import DataConfig
from vegan.data import load_dataset
from vegan.metrics import grid_metrics
from vegan.storage import Storage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(storage: Storage, rel: str) -> Image.Image:
    raw = storage.read_bytes(rel)
    assert raw.startswith(PNG_MAGIC)
    img = Image.open(io.BytesIO(raw))
    img.verify()
    return Image.open(io.BytesIO(raw))


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits")).data


def test_image_grid_upscales_small_images(tmp_path, digits):
    st = Storage(str(tmp_path))
    assert report.save_image_grid(st, "grids/samples.png", digits[:16], nrow=4) == "grids/samples.png"
    img = _png(st, "grids/samples.png")
    assert img.size[0] >= 4 * 28  # 8x8 digits upscaled to >= 28 px cells
    report.save_image_grid(st, "rgb.png", torch.rand(5, 3, 32, 32) * 1.5 - 0.2)  # out of range: clamped
    assert _png(st, "rgb.png").mode == "RGB"


def test_nearest_neighbour_grid_finds_copies(tmp_path, digits):
    st = Storage(str(tmp_path))
    train = digits[:500]
    samples = torch.cat([train[[7, 42]], torch.rand(2, 1, 8, 8)])
    dist = report.nearest_neighbour_grid(st, "nn.png", samples, train, k=4)
    assert dist.shape == (4, 4) and (dist[:, :-1] <= dist[:, 1:]).all()
    assert dist[:2, 0].abs().max() == 0  # exact copies are found at distance 0
    assert (dist[2:, 0] > 0).all()
    img = _png(st, "nn.png")
    assert img.size[0] > img.size[1]  # 5 columns (sample + 4 neighbours), 4 rows
    feats = report.nearest_neighbour_grid(
        st, "nn_feat.png", samples, train, k=2, sample_features=samples.flatten(1), train_features=train.flatten(1)
    )
    torch.testing.assert_close(feats, dist[:, :2])
    with pytest.raises(ValueError, match="both"):
        report.nearest_neighbour_grid(st, "x.png", samples, train, sample_features=samples.flatten(1))


def test_plots_are_valid_pngs(tmp_path):
    st = Storage(str(tmp_path))
    g = torch.Generator().manual_seed(0)
    report.plot_codes_pca(st, "pca.png", torch.randn(300, 6, generator=g), torch.randn(50, 6, generator=g),
                          labels=torch.randint(0, 10, (300,), generator=g))  # fmt: skip
    report.plot_codes_pca(st, "pca_nolabels.png", torch.randn(300, 1), torch.randn(20, 1))
    history = [{"iteration": i, "energy": 1.0 / (i + 1)} for i in range(100)]
    for row in history[::20]:
        row.update(max_rel_error=5.0 / (row["iteration"] + 1), l1_rel_error=1.0 / (row["iteration"] + 1))
    report.plot_ot_history(st, "ot.png", history)
    report.plot_ot_history(st, "ot_energy_only.png", [{"iteration": 0, "energy": 1.0}, {"iteration": 1, "energy": 0.5}])
    grid = load_dataset(DataConfig(name="grid2d", limit=1000)).data.numpy()
    report.plot_grid2d(st, "grid.png", grid, grid[:200] + 0.1)
    report.plot_grid2d(st, "grids.png", grid, {"good": grid[:300], "collapsed": grid[:300] * 0, "off": grid + 1})
    for name in ("pca.png", "pca_nolabels.png", "ot.png", "ot_energy_only.png", "grid.png", "grids.png"):
        w, h = _png(st, name).size
        assert w > 200 and h > 200


def test_metrics_markdown_table():
    md = report.metrics_markdown(
        {"ae": {"fid": 12.3456, "kid_mean": 0.001}, "aeot": {"fid": 3.0, "coverage": float("nan"), "n": 7}}
    )
    lines = md.splitlines()
    assert lines[0] == "| set | fid | kid_mean | coverage | n |"
    assert lines[2] == "| ae | 12.35 | 0.001 | – | – |"
    assert lines[3] == "| aeot | 3 | – | nan | 7 |"
    assert "| seconds | 1.5 |" in report.metrics_markdown({"seconds": 1.5})


def test_write_report_writes_markdown_and_strict_json(tmp_path):
    st = Storage(str(tmp_path / "run" / "eval"))
    report.save_image_grid(st, "samples.png", torch.rand(4, 1, 28, 28))
    metrics = {"aeot": {"fid": 4.2, "kid_mean": float("inf")}, "grid": grid_metrics(np.zeros((10, 2)))}
    text = report.write_report(st, metrics, {"samples": "samples.png"}, {"Config": "```yaml\nn: 1\n```"})
    assert st.read_text("report.md") == text
    assert "| aeot | 4.2 |" in text and "![samples](samples.png)" in text and "## Config" in text
    assert (tmp_path / "run" / "eval" / "samples.png").is_file()  # the embedded path resolves
    loaded = json.loads(st.read_text("metrics.json"), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    sets = loaded["sets"]
    assert sets["aeot"]["kid_mean"] is None and sets["grid"]["mode_counts"][12] == 10  # (0, 0) is mode 12


def test_report_on_object_storage(s3_bucket):
    url, opts = s3_bucket
    st = Storage(f"{url}/runs/r1/eval", opts)
    report.save_image_grid(st, "samples.png", torch.rand(4, 1, 8, 8))
    report.write_report(st, {"ae": {"fid": 1.0}}, {"samples": "samples.png"}, about={"protocol": "split"})
    assert st.read_bytes("samples.png").startswith(PNG_MAGIC)
    assert json.loads(st.read_text("metrics.json")) == {"protocol": "split", "sets": {"ae": {"fid": 1.0}}}


def test_protocol_states_roles_extractor_and_caveats():
    info = {
        "extractor": "vegan-selfsup",
        "extractor_reason": "auto: the training data has no labels",
        "classifier_task": "rotation",
        "classifier_train_examples": 500,
        "classifier_accuracy": 0.91,
    }
    text = report.protocol_markdown(128, 360, 512, info)
    assert "examples 0 to 127" in text and "examples 128 to 255" in text
    assert "`vegan-selfsup` (auto: the training data has no labels)" in text
    assert "learned from 500 examples of the training split (of 512; rotation prediction, no labels)" in text
    assert "measure its accuracy: 0.910" in text
    assert "none of them held-out examples" in text and "Caution" not in text
    worst = report.protocol_markdown(10, 20, 20, {**info, "classifier_saw_held_out": True}, overlap=20)
    assert "**Caution:** 20 of the 20 held-out examples are also training examples" in worst
    assert "including the held-out examples" in worst
    assert "no feature extractor" in report.protocol_markdown(10, 20, 20, None)
