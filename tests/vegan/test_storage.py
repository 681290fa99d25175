import json

import pytest
import torch

from vegan.checkpoint import CheckpointDir
from vegan.storage import Storage, StorageError


def test_local_roundtrip_and_atomic_names(tmp_path):
    st = Storage(str(tmp_path / "run"))
    st.write_json("a/b.json", {"x": 1})
    assert st.read_json("a/b.json") == {"x": 1}
    assert st.listdir("a") == ["b.json"]  # no temp files left behind
    st.save_torch("t.pt", {"w": torch.arange(3)})
    assert torch.equal(st.load_torch("t.pt")["w"], torch.arange(3))
    with pytest.raises(FileNotFoundError, match="not found in storage"):
        st.read_bytes("missing.json")


def test_checkpoint_fallback_on_corruption(tmp_path, caplog):
    ck = CheckpointDir(Storage(str(tmp_path)), keep=2)
    for step in (10, 20, 30):
        ck.save(step, {"value": step})
    assert ck.steps() == [20, 30]  # pruned to keep=2
    (tmp_path / "ckpt-00000030.pt").write_bytes(b"truncated")
    state = ck.load_latest()
    assert state["step"] == 20 and state["value"] == 20
    assert "corrupt checkpoint" in caplog.text


def test_s3_roundtrip(s3_bucket):
    url, opts = s3_bucket
    st = Storage(f"{url}/runs/x", opts)
    st.check_writable()
    st.write_json("manifest.json", {"ok": True})
    assert json.loads(st.read_bytes("manifest.json")) == {"ok": True}
    assert st.sub("x").uri("y") == f"{url}/runs/x/x/y"


def test_s3_missing_bucket_is_clear(s3_endpoint):
    st = Storage("s3://no-such-bucket-vegan/run", {"endpoint_url": s3_endpoint})
    with pytest.raises(StorageError, match="cannot write to storage s3://no-such-bucket-vegan/run"):
        st.check_writable()


def test_bad_url():
    with pytest.raises(StorageError, match="cannot open storage URL"):
        Storage("nosuchproto://x/y")


def test_s3_missing_credentials_is_clear(s3_endpoint, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    st = Storage("s3://any-bucket/run", {"endpoint_url": s3_endpoint})
    with pytest.raises(StorageError, match="credentials"):
        st.check_writable()
