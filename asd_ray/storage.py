"""Storage URLs: one place that turns a URL into what fsspec, pyarrow and Ray Data need.

Every input and output of asd_ray is a URL: a local path, ``file://...``, ``s3://bucket/key``
or anything else fsspec knows. Credentials are never part of a URL or a config: they come from
the standard AWS chain (env vars, ~/.aws, instance roles). For S3-compatible stores the endpoint
comes from ``StorageOptions.endpoint_url`` or the standard ``AWS_ENDPOINT_URL(_S3)`` env vars.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs
from pydantic import BaseModel, Field


class StorageOptions(BaseModel):
    """Where object storage lives. Holds no secrets, so it can be saved and logged."""

    endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint, e.g. http://127.0.0.1:9000. "
        "Default: $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL, else AWS.",
    )
    region: str | None = Field(default=None, description="Default: $AWS_REGION / $AWS_DEFAULT_REGION or us-east-1")

    def resolved_endpoint(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    def resolved_region(self) -> str:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"

    def resolved(self) -> "StorageOptions":
        """Endpoint and region fixed from this process's environment, to ship to Ray workers."""
        return StorageOptions(endpoint_url=self.resolved_endpoint(), region=self.resolved_region())


def protocol(url: str) -> str:
    scheme = urlparse(url).scheme
    return "file" if scheme in ("", "file") or len(scheme) == 1 else scheme  # len 1: Windows drive


def strip_protocol(url: str) -> str:
    if protocol(url) == "file":
        return os.path.abspath(url[len("file://"):] if url.startswith("file://") else url)
    return url.split("://", 1)[1].rstrip("/")


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def fsspec_fs(url: str, options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it."""
    options = options or StorageOptions()
    proto = protocol(url)
    if proto in ("s3", "s3a"):
        client_kwargs = {"region_name": options.resolved_region()}
        endpoint = options.resolved_endpoint()
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        fs = fsspec.filesystem("s3", client_kwargs=client_kwargs, skip_instance_cache=False)
    else:
        fs = fsspec.filesystem(proto)
    return fs, strip_protocol(url)


def pyarrow_fs(url: str, options: StorageOptions | None = None) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``url`` and the path inside it (what Ray Data and Ray Train take)."""
    options = options or StorageOptions()
    proto = protocol(url)
    if proto == "file":
        return pafs.LocalFileSystem(), strip_protocol(url)
    if proto in ("s3", "s3a"):
        kwargs: dict = {"region": options.resolved_region()}
        endpoint = options.resolved_endpoint()
        if endpoint:
            parsed = urlparse(endpoint)
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        return pafs.S3FileSystem(**kwargs), strip_protocol(url)
    fs, path = fsspec_fs(url, options)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def is_local(url: str) -> bool:
    return protocol(url) == "file"


def write_bytes_atomic(url: str, data: bytes, options: StorageOptions | None = None) -> None:
    """Write a whole object so that readers see all of it or nothing.

    Local files go to a hidden temporary name in the same folder and are renamed into place.
    Object stores publish an object only when its PUT (or multipart upload) completes.
    """
    if is_local(url):
        with open_atomic(url, options) as f:
            f.write(data)
    else:
        fs, path = fsspec_fs(url, options)
        fs.pipe_file(path, data)  # one PUT, published when complete


def read_bytes(url: str, options: StorageOptions | None = None) -> bytes:
    fs, path = fsspec_fs(url, options)
    return fs.cat_file(path)


def remove(url: str, options: StorageOptions | None = None) -> None:
    """Delete one object or file if it is there."""
    fs, path = fsspec_fs(url, options)
    if fs.exists(path):
        fs.rm_file(path)


def exists(url: str, options: StorageOptions | None = None) -> bool:
    fs, path = fsspec_fs(url, options)
    return fs.exists(path)


def canonical(url: str) -> str:
    """One spelling per location: absolute local paths, ``proto://bucket/key`` otherwise."""
    return full_url(url, strip_protocol(url))


def full_url(url: str, path: str) -> str:
    """Turn a path returned by a filesystem listing back into a URL of the same protocol."""
    proto = protocol(url)
    return path if proto == "file" else f"{proto}://{path}"


@contextlib.contextmanager
def open_atomic(url: str, options: StorageOptions | None = None):
    """A binary file to write in pieces that readers see whole or not at all: locally a hidden
    temporary name renamed into place, in object stores a (multipart) upload completed on close and
    aborted on error."""
    fs, path = fsspec_fs(url, options)
    if is_local(url):
        parent = path.rsplit("/", 1)[0]
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    f = fs.open(path, "wb")
    try:
        yield f
    except BaseException:
        f.discard()  # fsspec: nothing published
        raise
    f.close()
