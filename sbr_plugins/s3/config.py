"""Settings of the S3 destination, and reading them from an ``s3://BUCKET/PREFIX?…`` URL.

Kept apart from the destination so that validating or listing settings never imports boto3.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs

from sbr_core.errors import UsageError
from sbr_core.providers.destination import check_key
from sbr_core.settings import Secret, setting

MiB = 2**20
GiB = 2**30
#: S3's limits: every part but the last at least 5 MiB, at most 10,000 parts, 5 GiB per PUT.
MIN_PART = 5 * MiB
MAX_PART = 5 * GiB
MAX_PARTS = 10_000

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


# --- settings -------------------------------------------------------------------------------


def _bucket_name(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if not _BUCKET.fullmatch(value) or ".." in value or _is_ip(value):
        raise ValueError(f"{value!r} is not a valid bucket name: 3 to 63 lowercase letters, "
                         "digits, '.' and '-', starting and ending with a letter or digit")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _key_prefix(_: Any, __: attrs.Attribute[str], value: str) -> None:
    stripped = value.strip("/")
    if stripped:
        try:
            check_key(stripped)
        except UsageError:
            raise ValueError(f"{value!r} is not a valid prefix: '/'-separated parts of letters, "
                             "digits and ._-, not starting with '.' or '-'") from None


def _endpoint_url(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if not value:
        return
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("the endpoint URL must not carry credentials, a query or a fragment")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None


def _region_name(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if not _REGION.fullmatch(value):
        raise ValueError(f"{value!r} is not a region name (e.g. us-east-1)")


def _no_spaces(_: Any, __: attrs.Attribute[str], value: str) -> None:
    if value != value.strip() or any(c.isspace() for c in value):
        raise ValueError("must not contain spaces")


def _credentials_pair(instance: S3Config, _: attrs.Attribute[Secret], value: Secret) -> None:
    # Validators run once every field is set, so the key id can be looked at here.
    if bool(instance.access_key_id) != bool(value):
        raise ValueError("give both the access key id and the secret access key, or neither "
                         "(then the node's AWS credentials are used)")


def _session_token(instance: S3Config, _: attrs.Attribute[Secret], value: Secret) -> None:
    if value and not instance.access_key_id:
        raise ValueError("a session token needs the access key id and secret it belongs to")


def _between(low: float, high: float, unit: str = "") -> Any:
    def check(_: Any, __: attrs.Attribute[Any], value: float) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be between {_show(low, unit)} and {_show(high, unit)}, "
                             f"got {_show(value, unit)}")

    return check


def _show(value: float, unit: str) -> str:
    if unit == "bytes":
        return f"{value / MiB:g} MiB" if value < GiB else f"{value / GiB:g} GiB"
    return f"{value:g}{unit}"


@attrs.frozen
class S3Config:
    """Settings of an S3 destination."""

    bucket: str = setting(label="Bucket", help="Name of an existing bucket.",
                          validator=_bucket_name)
    prefix: str = setting(
        label="Prefix",
        help="Folder inside the bucket that holds the repository (e.g. 'sbr/site1'); empty "
        "uses the whole bucket. Several repositories can share a bucket under different prefixes.",
        default="", validator=_key_prefix)
    endpoint: str = setting(
        label="Endpoint URL",
        help="URL of an S3-compatible service (MinIO, Ceph RGW, …), e.g. "
        "https://s3.example.net:9000; empty for Amazon S3.",
        default="", validator=_endpoint_url)
    region: str = setting(label="Region", help="Region of the bucket; most S3-compatible "
                          "services accept us-east-1.", default="us-east-1", validator=_region_name)
    access_key_id: str = setting(
        label="Access key ID",
        help="Empty to use the node's own AWS credentials (environment, ~/.aws, instance role).",
        default="", validator=_no_spaces)
    secret_access_key: Secret = setting(label="Secret access key", help="Stored encrypted, "
                                        "never shown again.", secret=True,
                                        default=Secret(""), validator=_credentials_pair)
    session_token: Secret = setting(label="Session token", help="Only for temporary (STS) "
                                    "credentials.", secret=True, default=Secret(""),
                                    validator=_session_token)
    addressing_style: str = setting(
        label="Addressing style",
        help="How the bucket appears in request URLs: 'path' (endpoint/bucket/key) or 'virtual' "
        "(bucket.endpoint/key). 'auto' uses path with an endpoint URL and virtual on Amazon S3.",
        choices=("auto", "path", "virtual"), default="auto")
    multipart_threshold: int = setting(
        label="Multipart threshold (bytes)",
        help="Objects larger than this are uploaded in parts. Interrupted multipart uploads "
        "leave parts behind: give the bucket a lifecycle rule that aborts incomplete uploads.",
        default=64 * MiB, validator=_between(MIN_PART, MAX_PART, "bytes"))
    multipart_part_size: int = setting(
        label="Part size (bytes)",
        help="Size of each part of a multipart upload; at most 10,000 parts make an object.",
        default=16 * MiB, validator=_between(MIN_PART, MAX_PART, "bytes"))
    concurrency: int = setting(
        label="Parallel requests",
        help="Parts of one upload, or objects of one batch read, transferred at the same time. "
        "An upload holds up to (this + 1) parts in memory, or the multipart threshold "
        "while it decides.", default=4, validator=_between(1, 64))
    max_attempts: int = setting(
        label="Attempts per request",
        help="Tries of each request, the first included, with backoff between them.",
        default=8, validator=_between(1, 50))
    verify_tls: bool = setting(label="Verify TLS certificates", help="Turn off only for a test "
                               "service with a self-signed certificate; prefer a CA bundle.",
                               default=True)
    ca_bundle: str = setting(label="CA bundle", help="Path on the node of a PEM file of the CA "
                             "certificates to trust for the endpoint; empty for the system's.",
                             default="")
    connect_timeout: float = setting(label="Connect timeout (seconds)", default=10.0,
                                     validator=_between(0.1, 600, " s"))
    read_timeout: float = setting(label="Read timeout (seconds)", default=60.0,
                                  validator=_between(0.1, 3600, " s"))


# --- s3:// URLs -----------------------------------------------------------------------------

_SECRET_SETTINGS = ("secret_access_key", "session_token")
_URL_SETTINGS = tuple(field.name for field in attrs.fields(S3Config)
                      if field.name not in ("bucket", "prefix", *_SECRET_SETTINGS))


def config_from_url(url: str) -> dict[str, str]:
    """Settings, as an admin would type them, from ``s3://BUCKET/PREFIX?endpoint=…&region=…``.

    Query keys are setting names. Credentials come from AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) unless ``access_key_id`` is in the query;
    a secret is never taken from the URL. Raises UsageError naming what is wrong.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "s3":
        raise UsageError("an S3 repository URL starts with s3:// (s3://BUCKET/PREFIX?...)")
    # Nothing of the URL is echoed below: it may hold a secret the admin pasted by mistake.
    if "@" in parts.netloc:
        raise UsageError("credentials do not belong in an s3:// URL (they end up in shell "
                         "history and process lists): set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY")
    if not parts.netloc:
        raise UsageError("the s3:// URL names no bucket: use s3://BUCKET/PREFIX")
    if parts.fragment:
        raise UsageError("an s3:// URL takes no '#' fragment")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise UsageError("the query of the s3:// URL is malformed: use ?name=value&...") from None
    names = [name for name, _ in pairs]
    secrets = sorted(set(names) & set(_SECRET_SETTINGS))
    if secrets:
        raise UsageError(f"{', '.join(secrets)} must not be given in the URL (it would end up "
                         "in shell history and process lists): set AWS_SECRET_ACCESS_KEY "
                         "(and AWS_SESSION_TOKEN) in the environment")
    unknown = sorted(set(names) - set(_URL_SETTINGS))
    if unknown:
        raise UsageError(f"unknown setting(s) in the s3:// URL: {', '.join(unknown)} "
                         f"(known: {', '.join(_URL_SETTINGS)})")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"setting(s) given twice in the s3:// URL: {', '.join(repeated)}")
    settings = {"bucket": parts.netloc, "prefix": parts.path.strip("/"), **dict(pairs)}
    settings.update(_environment_credentials(bool(settings.get("access_key_id"))))
    return settings


def _environment_credentials(key_in_url: bool) -> dict[str, str]:
    key_id = os.environ.get("AWS_ACCESS_KEY_ID", "")
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    if key_in_url:
        if not secret:
            raise UsageError("access_key_id is given in the s3:// URL, but its secret is not in "
                             "AWS_SECRET_ACCESS_KEY")
        return {"secret_access_key": secret}
    if not key_id:
        return {}  # the node's own credential chain (~/.aws, instance role) applies
    if not secret:
        raise UsageError("AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
    found = {"access_key_id": key_id, "secret_access_key": secret}
    token = os.environ.get("AWS_SESSION_TOKEN", "")
    if token:
        found["session_token"] = token
    return found
