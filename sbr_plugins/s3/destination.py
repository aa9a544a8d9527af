"""Objects in an S3 bucket below an optional prefix, through boto3.

Small objects go up in one PUT, larger ones as a multipart upload whose parts are read from the
stream one at a time, so memory stays bounded whatever the size. ``if_absent`` is an S3
conditional write (``If-None-Match: *``), on the PUT or on the multipart upload's completion.
Platform errors are translated here, at the boundary, into :mod:`sbr_core.errors`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

from sbr_core import __version__
from sbr_core.errors import (
    DestinationError,
    DestinationFull,
    DestinationRetentionLocked,
    DestinationUnavailable,
    ObjectExists,
    ObjectNotFound,
    UsageError,
)
from sbr_core.providers.base import ProviderContext
from sbr_core.providers.destination import (
    Destination,
    DestinationCapabilities,
    ObjectInfo,
    check_key,
    check_prefix,
    is_valid_key,
)
from sbr_plugins.s3.config import MAX_PARTS, MiB, S3Config, config_from_url

if TYPE_CHECKING:
    from botocore.exceptions import ClientError  # type: ignore[import-untyped]

__all__ = ["S3Config", "S3Destination", "config_from_url"]


def _botocore() -> Any:
    """``botocore.exceptions``, imported on first use. boto3 and botocore cost ~20 MB of memory,
    which a node that only uses local repositories must not pay because this plugin is
    installed; an ``except`` clause evaluates its class only when something was raised."""
    import botocore.exceptions  # type: ignore[import-untyped]

    return botocore.exceptions


def _boto_errors() -> tuple[type[Exception], ...]:
    """Every error botocore raises: a service's answer or a failure on the way there."""
    exceptions = _botocore()
    return (exceptions.ClientError, exceptions.BotoCoreError)


# Error codes by what they mean to an admin. HEAD responses carry no body, so only the status.
_MISSING = {"NoSuchKey", "NotFound", "404"}
_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
            "TokenRefreshRequired", "InvalidClientTokenId", "AuthorizationHeaderMalformed"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden", "403"}
_FULL = {"QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded",
         "InsufficientStorage", "EntityTooLarge"}
_BUSY = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}
_PRECONDITION = {"PreconditionFailed", "412"}


# --- the destination ------------------------------------------------------------------------


class S3Destination(Destination):
    """Stores each object under ``prefix/key`` in the configured bucket.

    On a versioned bucket a delete leaves the old version behind; a lifecycle rule for
    noncurrent versions is what frees the space.
    """

    name = "s3"
    label = "S3-compatible object storage"
    description = "A bucket on Amazon S3 or an S3-compatible service (MinIO, Ceph RGW, …)."
    Config = S3Config
    #: How ``sbr repo`` (sbr_core/repository/location.py) turns ``s3://…`` into settings.
    config_from_url = staticmethod(config_from_url)
    capabilities = DestinationCapabilities(ranged_read=True, atomic_overwrite=True,
                                           high_latency=False, preferred_object_size=32 * MiB)

    config: S3Config

    def __init__(self, config: S3Config, *, context: ProviderContext) -> None:
        super().__init__(config, context=context)
        self._root = config.prefix.strip("/")
        self._lock = threading.Lock()
        self._client_instance: Any = None

    # --- client, names and errors ---------------------------------------------------------

    def _client(self) -> Any:
        with self._lock:
            if self._client_instance is None:
                self._client_instance = self._make_client()
            return self._client_instance

    def _make_client(self) -> Any:
        import boto3  # type: ignore[import-untyped]
        from botocore.config import Config as BotoConfig  # type: ignore[import-untyped]

        cfg = self.config
        style = cfg.addressing_style
        if style == "auto" and cfg.endpoint:
            style = "path"  # most S3-compatible services have no wildcard DNS for buckets
        # botocore's default CRC checksums use aws-chunked uploads that many S3-compatible
        # services reject; there every PUT carries Content-MD5 instead (see _b64).
        checksums = "when_required" if cfg.endpoint else "when_supported"
        boto_config = BotoConfig(
            region_name=cfg.region,
            signature_version="s3v4",
            s3={"addressing_style": style},
            retries={"mode": "standard", "total_max_attempts": cfg.max_attempts},
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            max_pool_connections=max(10, 2 * cfg.concurrency),
            tcp_keepalive=True,
            request_checksum_calculation=checksums,
            response_checksum_validation=checksums,
            user_agent_extra=f"sbr/{__version__}",
        )
        credentials: dict[str, str] = {}
        if cfg.access_key_id:
            credentials = {"aws_access_key_id": cfg.access_key_id,
                           "aws_secret_access_key": cfg.secret_access_key.reveal()}
            if cfg.session_token:
                credentials["aws_session_token"] = cfg.session_token.reveal()
        verify: bool | str = (cfg.ca_bundle or True) if cfg.verify_tls else False
        try:
            # One session per destination: boto3's default session is not thread-safe.
            return boto3.session.Session().client(
                "s3", endpoint_url=cfg.endpoint.rstrip("/") or None, verify=verify,
                config=boto_config, **credentials)
        except _boto_errors() as exc:
            self._fail(exc, "cannot set up the S3 client")

    def _full(self, key: str) -> str:
        return f"{self._root}/{key}" if self._root else key

    def _where(self) -> str:
        return self.config.endpoint or f"Amazon S3 ({self.config.region})"

    def _fail(self, exc: BaseException, doing: str, key: str | None = None) -> NoReturn:
        """Raise the SbrError that says what ``exc`` means to an admin."""
        where = f"destination {self.context.name!r}: {doing}"
        bucket, endpoint = self.config.bucket, self._where()
        boto = _botocore()
        if isinstance(exc, boto.ClientError):
            code, status = _code(exc), _status(exc)
            if key is not None and code in _MISSING:
                raise ObjectNotFound(f"destination {self.context.name!r}: no object "
                                     f"{key!r}") from exc
            if code == "NoSuchBucket":
                raise DestinationUnavailable(f"{where}: bucket {bucket!r} does not exist at "
                                             f"{endpoint}") from exc
            if code in _REFUSED:
                raise DestinationUnavailable(
                    f"{where}: {endpoint} refused the credentials ({code}): check the access "
                    "key id and secret access key") from exc
            if code in _DENIED or status == 403:
                raise DestinationUnavailable(
                    f"{where}: {endpoint} refused the credentials for bucket {bucket!r} "
                    f"({code}): they are wrong or lack permission for it") from exc
            if code in _FULL or status == 507:
                raise DestinationFull(f"{where}: bucket {bucket!r} takes no more data "
                                      f"({code}: {_message(exc)})") from exc
            if code == "RequestTimeTooSkewed":
                raise DestinationUnavailable(f"{where}: this node's clock differs too much from "
                                             f"{endpoint}'s; synchronise it (NTP)") from exc
            if code in _BUSY or status >= 500:
                raise DestinationUnavailable(
                    f"{where}: {endpoint} failed {self.config.max_attempts} attempt(s) "
                    f"({code}: {_message(exc)})", retryable=True) from exc
            raise DestinationError(f"{where}: {code or status}: {_message(exc)}") from exc
        if isinstance(exc, (boto.NoCredentialsError, boto.PartialCredentialsError,
                            boto.CredentialRetrievalError)):
            raise DestinationUnavailable(
                f"{where}: no usable credentials ({exc}): set the access key id and secret "
                "access key, or give the node AWS credentials") from exc
        if isinstance(exc, (boto.ConnectionError, boto.HTTPClientError,
                            boto.IncompleteReadError)):
            raise DestinationUnavailable(f"{where}: cannot reach {endpoint}: {exc}",
                                         retryable=True) from exc
        raise DestinationError(f"{where}: {exc}") from exc

    # --- writing --------------------------------------------------------------------------

    def put(self, key: str, data: bytes | BinaryIO, *, if_absent: bool = False) -> None:
        """One PUT up to the multipart threshold, else a multipart upload read part by part;
        with ``if_absent`` the write is conditional (``If-None-Match: *``)."""
        check_key(key)
        threshold, part_size = self.config.multipart_threshold, self.config.multipart_part_size
        try:
            if isinstance(data, (bytes, bytearray, memoryview)):
                body = bytes(data)
                if len(body) <= threshold:
                    self._put_whole(key, body, if_absent)
                else:
                    parts = (body[i:i + part_size] for i in range(0, len(body), part_size))
                    self._put_multipart(key, parts, if_absent)
                return
            pieces, ended = _read_head(data, threshold, part_size)
            if ended and sum(map(len, pieces)) <= threshold:
                self._put_whole(key, b"".join(pieces), if_absent)
            else:
                self._put_multipart(key, _parts(pieces, None if ended else data, part_size),
                                    if_absent)
        except _boto_errors() as exc:
            self._fail(exc, f"cannot store {key!r}")

    def _put_whole(self, key: str, body: bytes, if_absent: bool) -> None:
        condition = {"IfNoneMatch": "*"} if if_absent else {}
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        for attempt in range(3):
            try:
                self._client().put_object(Bucket=self.config.bucket, Key=self._full(key),
                                          Body=body, ContentMD5=_b64(digest), **condition)
                return
            except _botocore().ClientError as exc:
                code = _code(exc)
                if if_absent and code in _PRECONDITION:
                    if self._made_by_a_lost_attempt(exc, key, digest.hex()):
                        return
                    raise self._exists(key) from None
                # S3 answers 409 when a delete raced the conditional write: try again.
                if code != "ConditionalRequestConflict" or attempt == 2:
                    raise

    def _put_multipart(self, key: str, parts: Iterator[bytes | bytearray], if_absent: bool
                       ) -> None:
        client, bucket, full = self._client(), self.config.bucket, self._full(key)
        if if_absent and self._exists_now(full):
            raise self._exists(key)  # cheap early answer; the completion below is the real check
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=full)["UploadId"]
        try:
            etags = self._upload_parts(full, upload_id, parts)
            condition = {"IfNoneMatch": "*"} if if_absent else {}
            try:
                client.complete_multipart_upload(
                    Bucket=bucket, Key=full, UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": number, "ETag": etag}
                                               for number, etag in sorted(etags.items())]},
                    **condition)
            except _botocore().ClientError as exc:
                if if_absent and _code(exc) in _PRECONDITION:
                    if self._made_by_a_lost_attempt(exc, key, _multipart_etag(etags)):
                        return
                    raise self._exists(key) from None
                raise
        except BaseException:
            self._abort(full, upload_id)
            raise

    def _made_by_a_lost_attempt(self, refused: ClientError, key: str, etag: str) -> bool:
        """Whether a refused conditional write was refused because of its own earlier attempt.

        botocore retries a request whose response was lost (a read timeout, a dropped
        connection); if the lost attempt had created the object, the retry is refused. That
        object is ours when it carries exactly our content's ETag.
        """
        if not refused.response.get("ResponseMetadata", {}).get("RetryAttempts") or not etag:
            return False
        try:
            head = self._client().head_object(Bucket=self.config.bucket, Key=self._full(key))
        except _botocore().ClientError:
            return False
        return str(head.get("ETag", "")).strip('"') == etag

    def _upload_parts(self, full: str, upload_id: str, parts: Iterator[bytes | bytearray]
                      ) -> dict[int, str]:
        """Upload parts while reading the next; at most ``concurrency`` in flight."""
        limit = self.config.concurrency
        etags: dict[int, str] = {}
        pending: set[Future[tuple[int, str]]] = set()
        pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="sbr-s3-part")
        try:
            for number, body in enumerate(parts, start=1):
                if number > MAX_PARTS:
                    raise DestinationError(
                        f"destination {self.context.name!r}: object too large for "
                        f"{MAX_PARTS} parts of {self.config.multipart_part_size} bytes; "
                        "raise the part size")
                while len(pending) >= limit:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    etags.update(future.result() for future in done)
                pending.add(pool.submit(self._upload_part, full, upload_id, number, body))
                del body  # the pool holds the part now; do not keep it alive a round longer
            done, pending = wait(pending)
            etags.update(future.result() for future in done)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return etags

    def _upload_part(self, full: str, upload_id: str, number: int,
                     body: bytes | bytearray) -> tuple[int, str]:
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        response = self._client().upload_part(Bucket=self.config.bucket, Key=full,
                                              UploadId=upload_id, PartNumber=number, Body=body,
                                              ContentMD5=_b64(digest))
        return number, str(response["ETag"])

    def _abort(self, full: str, upload_id: str) -> None:
        try:
            self._client().abort_multipart_upload(Bucket=self.config.bucket, Key=full,
                                                  UploadId=upload_id)
        except _boto_errors() as exc:
            self.context.logger.warning(
                "destination %r: could not abort the multipart upload of %r (%s); a lifecycle "
                "rule that aborts incomplete uploads frees its parts", self.context.name,
                full, exc)

    def _exists_now(self, full: str) -> bool:
        try:
            self._client().head_object(Bucket=self.config.bucket, Key=full)
        except _botocore().ClientError as exc:
            if _code(exc) in _MISSING:
                return False
            raise
        return True

    def _exists(self, key: str) -> ObjectExists:
        return ObjectExists(f"destination {self.context.name!r}: object {key!r} already exists")

    # --- reading --------------------------------------------------------------------------

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read an object, or a byte range of it (``Range`` request)."""
        check_key(key)
        if offset < 0 or (length is not None and length < 0):
            raise UsageError(f"cannot read {key!r} from offset {offset} for length {length}")
        if length == 0:
            self.stat(key)  # still an error for a missing object
            return b""
        ranged: dict[str, str] = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            ranged = {"Range": f"bytes={offset}-{end}"}
        try:
            response = self._client().get_object(Bucket=self.config.bucket,
                                                  Key=self._full(key), **ranged)
            body = response["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()
        except _botocore().ClientError as exc:
            if _code(exc) == "InvalidRange":
                return b""  # the object exists, and the range starts at or past its end
            self._fail(exc, f"cannot read {key!r}", key)
        except _botocore().BotoCoreError as exc:
            self._fail(exc, f"cannot read {key!r}", key)

    def open(self, key: str) -> BinaryIO:
        """The object's body as a buffered stream; the caller closes it."""
        check_key(key)
        try:
            response = self._client().get_object(Bucket=self.config.bucket, Key=self._full(key))
        except _boto_errors() as exc:
            self._fail(exc, f"cannot read {key!r}", key)
        return io.BufferedReader(_Body(response["Body"], self, key), buffer_size=MiB)

    def get_many(self, keys: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """Read several objects, ``concurrency`` at a time, in completion order."""
        limit = self.config.concurrency
        pending: set[Future[tuple[str, bytes]]] = set()
        pool = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="sbr-s3-get")
        try:
            for key in keys:
                check_key(key)
                pending.add(pool.submit(lambda k: (k, self.get(k)), key))
                if len(pending) >= limit:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Page through ``list_objects_v2``; names that cannot be keys (folder markers made by
        consoles, ``dir/``) are not objects of ours and are skipped."""
        check_prefix(prefix)
        strip = len(self._root) + 1 if self._root else 0
        # With a root prefix, list below 'root/' so that 'rootx/…' never shows up.
        wanted = f"{self._root}/{prefix}" if self._root else prefix
        paginator = self._client().get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.config.bucket, Prefix=wanted):
                for item in page.get("Contents", ()):
                    key = item["Key"][strip:]
                    if is_valid_key(key):
                        yield ObjectInfo(key, int(item["Size"]),
                                         item["LastModified"].timestamp())
        except _boto_errors() as exc:
            self._fail(exc, f"cannot list {prefix or '(all)'!r}")

    def stat(self, key: str) -> ObjectInfo:
        """Size and time of one object (HEAD)."""
        check_key(key)
        try:
            head = self._client().head_object(Bucket=self.config.bucket, Key=self._full(key))
        except _botocore().ClientError as exc:
            if _code(exc) in _MISSING:
                self._check_bucket(f"cannot stat {key!r}")  # a HEAD 404 may mean either
            self._fail(exc, f"cannot stat {key!r}", key)
        except _botocore().BotoCoreError as exc:
            self._fail(exc, f"cannot stat {key!r}", key)
        return ObjectInfo(key, int(head["ContentLength"]), head["LastModified"].timestamp())

    def _check_bucket(self, doing: str) -> None:
        try:
            self._client().head_bucket(Bucket=self.config.bucket)
        except _botocore().ClientError as exc:
            if _code(exc) in _MISSING | {"NoSuchBucket"}:
                raise DestinationUnavailable(
                    f"destination {self.context.name!r}: {doing}: bucket "
                    f"{self.config.bucket!r} does not exist at {self._where()}") from exc
            self._fail(exc, doing)
        except _botocore().BotoCoreError as exc:
            self._fail(exc, doing)

    # --- deleting and testing -------------------------------------------------------------

    def delete(self, key: str) -> None:
        """DELETE the object; S3 answers success for a missing one too."""
        check_key(key)
        try:
            self._client().delete_object(Bucket=self.config.bucket, Key=self._full(key))
        except _botocore().ClientError as exc:
            if _code(exc) in _MISSING:
                return
            if _code(exc) in _DENIED and "object lock" in _message(exc).lower():
                raise DestinationRetentionLocked(
                    f"destination {self.context.name!r}: object {key!r} is kept by the bucket's "
                    "object lock until its retention date") from exc
            self._fail(exc, f"cannot delete {key!r}")
        except _botocore().BotoCoreError as exc:
            self._fail(exc, f"cannot delete {key!r}")

    def remove_abandoned(self, older_than: float) -> int:
        """Abort multipart uploads under the prefix started more than ``older_than`` s ago
        (a writer killed midway); their parts are billed until aborted."""
        client, bucket = self._client(), self.config.bucket
        prefix = f"{self._root}/" if self._root else ""
        cutoff = time.time() - older_than
        aborted = 0
        try:
            paginator = client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for upload in page.get("Uploads", ()):
                    if upload["Initiated"].timestamp() < cutoff:
                        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                                      UploadId=upload["UploadId"])
                        aborted += 1
        except _boto_errors() as exc:
            self._fail(exc, "cannot clean up unfinished multipart uploads")
        return aborted

    def test_connection(self) -> None:
        """Check the bucket, then write, read back and delete a probe object."""
        self._check_bucket("cannot open the bucket")
        self.probe()

    def close(self) -> None:
        """Close the client's connection pool."""
        with self._lock:
            client, self._client_instance = self._client_instance, None
        if client is not None:
            client.close()


class _Body(io.RawIOBase):
    """A response body as a raw stream whose read errors are the destination's errors."""

    def __init__(self, body: Any, destination: S3Destination, key: str) -> None:
        super().__init__()
        self._body, self._destination, self._key = body, destination, key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except _boto_errors() as exc:
            self._destination._fail(exc, f"cannot read {self._key!r}")
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


# --- small helpers --------------------------------------------------------------------------


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message") or _code(exc))


def _b64(digest: bytes) -> str:
    """Content-MD5's form. Every PUT carries it, so the service refuses a body damaged on the
    way (integrity, not security: MD5 is what S3 checks)."""
    return base64.b64encode(digest).decode()


def _multipart_etag(etags: dict[int, str]) -> str:
    """The ETag S3 gives a multipart object: MD5 of the parts' MD5s, then '-' and their count;
    "" when a service's part ETags are not MD5s."""
    try:
        joined = b"".join(bytes.fromhex(etags[n].strip('"')) for n in sorted(etags))
    except ValueError:
        return ""
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(etags)}"



def _read_exactly(stream: BinaryIO, size: int) -> bytes | bytearray:
    """``size`` bytes, or fewer only at the end: pipes and sockets return short reads, which
    are copied once into a buffer of the part's size (never joined, which would double it)."""
    first = stream.read(size)
    if not first or len(first) >= size:
        return first or b""
    buffer = bytearray(size)
    filled = len(first)
    buffer[:filled] = first
    del first
    while filled < size:
        more = stream.read(size - filled)
        if not more:
            del buffer[filled:]
            break
        buffer[filled:filled + len(more)] = more
        filled += len(more)
    return buffer


def _read_head(stream: BinaryIO, threshold: int, size: int
               ) -> tuple[list[bytes | bytearray], bool]:
    """Parts read until past the threshold or the end, and whether the end was reached: only
    then is a stream known to be small enough for one PUT."""
    pieces: list[bytes | bytearray] = []
    total, ended = 0, False
    while total <= threshold and not ended:
        piece = _read_exactly(stream, size)
        ended = len(piece) < size
        if piece:
            pieces.append(piece)
            total += len(piece)
    return pieces, ended


def _parts(pieces: list[bytes | bytearray], rest: BinaryIO | None, size: int
           ) -> Iterator[bytes | bytearray]:
    """The pieces already read, handed over (not kept), then the rest of the stream."""
    pieces.reverse()
    while pieces:
        yield pieces.pop()
    while rest is not None:
        part = _read_exactly(rest, size)
        if part:
            yield part
        if len(part) < size:
            return
