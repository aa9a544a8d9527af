"""Fixtures for the S3 destination: moto's S3 server on loopback, a fresh bucket per test, and
destinations built from settings as the core builds them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sbr_core.config import structure_config
from sbr_core.providers.base import ProviderContext
from sbr_plugins.s3.destination import S3Destination
from tests.s3server import ANY_KEY_ID, ANY_SECRET, MotoS3Server, moto_s3_server

DESTINATION_NAME = "cloud1"

MakeDestination = Callable[..., S3Destination]


@pytest.fixture(autouse=True)
def no_host_aws_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests see neither the host's AWS credentials and profiles nor a proxy for loopback."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3Server]:
    """The session's moto S3 server; it accepts any credentials."""
    yield from moto_s3_server(tmp_path_factory.mktemp("moto"))


@pytest.fixture(scope="session")
def s3_auth_server(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[MotoS3Server, str, str, str]]:
    """A second server that checks signatures: (server, bucket, key id, secret) of one IAM user
    allowed all of S3, with that bucket made before checks were turned on."""
    for server in moto_s3_server(tmp_path_factory.mktemp("moto-auth")):
        key_id, secret = server.iam_user_with_s3_access("sbr-node")
        server.client().create_bucket(Bucket="sbr-auth")
        server.enforce_auth()
        yield server, "sbr-auth", key_id, secret


@pytest.fixture
def bucket(s3_server: MotoS3Server) -> Iterator[str]:
    """A new empty bucket, emptied and removed after the test."""
    name = f"sbr-test-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield name
    for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
        client.abort_multipart_upload(Bucket=name, Key=upload["Key"],
                                      UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)


@pytest.fixture
def make_destination(s3_server: MotoS3Server, bucket: str) -> Iterator[MakeDestination]:
    """Build a destination from settings as an admin types them (strings), named 'cloud1';
    by default on the test's bucket, on the session's server. Closed after the test."""
    made: list[S3Destination] = []

    def make(**settings: Any) -> S3Destination:
        values = {"bucket": bucket, "endpoint": s3_server.endpoint,
                  "access_key_id": ANY_KEY_ID, "secret_access_key": ANY_SECRET,
                  **{name: str(value) for name, value in settings.items()}}
        config = structure_config(S3Destination.Config, values,
                                  subject=f"destination {DESTINATION_NAME!r}")
        destination = S3Destination(config, context=ProviderContext(name=DESTINATION_NAME))
        made.append(destination)
        return destination

    yield make
    for destination in made:
        destination.close()
