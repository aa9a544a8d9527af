"""The ``s3`` backup destination: a bucket (and prefix) on AWS S3 or any S3-compatible store."""

from __future__ import annotations

from sbr_core import hookimpl


@hookimpl
def sbr_register_destinations() -> list[type]:
    """Contribute the S3 destination, imported only when the host asks; boto3 itself is
    imported only when a destination makes its client."""
    from sbr_plugins.s3.destination import S3Destination

    return [S3Destination]
