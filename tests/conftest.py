"""Shared services for the test suite (session fixtures).

S3: a real S3 endpoint, moto's server on 127.0.0.1 at a free port, started once per session
(as s3fs's own tests do). Fake credentials and the endpoint are put in the environment BEFORE
any s3fs filesystem is created (s3fs caches instances), and ``s3_storage_options`` passes the
endpoint explicitly as well, for code that takes fsspec storage options.
"""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(scope="session")
def moto_server():
    """Endpoint URL (``http://127.0.0.1:PORT``) of a moto S3 server running for the session."""
    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer

    fake_env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # else botocore probes the cloud metadata address
    }
    saved = {k: os.environ.get(k) for k in [*fake_env, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]}
    os.environ.update(fake_env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_storage_options(moto_server) -> dict:
    """fsspec storage options that reach the moto server."""
    return {"client_kwargs": {"endpoint_url": moto_server}, "key": "testing", "secret": "testing"}


@pytest.fixture
def s3_bucket(s3_storage_options) -> str:
    """A fresh, empty bucket on the moto server; returns its name."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options)
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    fs.invalidate_cache()
    return name
