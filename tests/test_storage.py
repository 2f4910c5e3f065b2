import os

import pyarrow.fs as pafs

from asd_ray import storage
from asd_ray.storage import StorageOptions


def test_url_forms(tmp_path):
    assert storage.protocol("s3://b/k") == "s3"
    assert storage.protocol("/a/b") == storage.protocol("file:///a/b") == "file"
    assert storage.strip_protocol("s3://b/k/") == "b/k"
    assert storage.strip_protocol("file:///a/b") == "/a/b"
    assert storage.canonical("file:///a/b") == storage.canonical("/a/b") == "/a/b"
    assert storage.join("s3://b/", "/x/", "y.parquet") == "s3://b/x/y.parquet"
    fs, path = storage.pyarrow_fs("memory://x/y")
    assert isinstance(fs, pafs.PyFileSystem) and path == "x/y"


def test_endpoint_from_options_or_env(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert StorageOptions().resolved_endpoint() == "http://127.0.0.1:1"
    assert StorageOptions(endpoint_url="http://127.0.0.1:2").resolved_endpoint() == "http://127.0.0.1:2"
    fs, path = storage.pyarrow_fs("s3://bkt/key", StorageOptions(endpoint_url="http://127.0.0.1:2"))
    assert isinstance(fs, pafs.S3FileSystem) and path == "bkt/key"


def test_atomic_local_write_leaves_no_temp(tmp_path):
    url = str(tmp_path / "sub" / "f.bin")
    storage.write_bytes_atomic(url, b"abc")
    storage.write_bytes_atomic(url, b"defg")
    assert storage.read_bytes(url) == b"defg"
    assert os.listdir(tmp_path / "sub") == ["f.bin"]


def test_s3_round_trip_through_both_clients(bucket):
    url = storage.join(bucket, "a", "b.bin")
    storage.write_bytes_atomic(url, b"hello")
    assert storage.exists(url) and storage.read_bytes(url) == b"hello"
    fs, path = storage.pyarrow_fs(url)
    with fs.open_input_stream(path) as f:
        assert f.read() == b"hello"
