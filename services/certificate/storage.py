"""Object storage for certificate files: the port and its two adapters.

Files are stored content-addressed (`certificate_object_key`), so a key names exactly one content
and writing it twice is harmless. `LocalFolderStorage` serves the embedded mode (a folder under
DATA_DIR); `MinioStorage` talks to MinIO or any other S3 endpoint.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat as stat_mode
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import certifi
import urllib3
from minio import Minio
from minio import time as s3_time
from minio.credentials import Credentials
from minio.error import InvalidResponseError, MinioException, S3Error
from minio.signer import sign_v4_s3

DEFAULT_CHUNK_SIZE = 64 * 1024
_COPY_BUFFER_SIZE = 256 * 1024
_MAX_KEY_LENGTH = 1024

# A key is "/"-separated segments of safe characters; no segment starts with "." (so "." and
# ".." cannot appear, and the local adapter's temporary ".…tmp" files never collide with keys).
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
_PREFIX_TAIL_PATTERN = re.compile(r"[A-Za-z0-9._-]*")
_SHA256_HEX_PATTERN = re.compile(r"[0-9a-f]{64}")


class StorageUnavailable(Exception):
    """The storage cannot be reached or used right now (the API answers 503)."""


class ObjectNotFound(Exception):
    """No object is stored under the key."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    last_modified: datetime


def certificate_object_key(sha256_hex: str) -> str:
    """Content-addressed key of a certificate file: "sha256/ab/cd/abcd…" (fan-out by prefix)."""
    _require_sha256_hex(sha256_hex)
    return f"sha256/{sha256_hex[:2]}/{sha256_hex[2:4]}/{sha256_hex}"


def validate_object_key(key: str) -> str:
    """Return the key if it is a safe relative key, else raise ValueError."""
    if len(key) > _MAX_KEY_LENGTH or not _KEY_PATTERN.fullmatch(key):
        raise ValueError(
            f"invalid object key {key!r}: use '/'-separated segments of letters, digits, '.', '_' "
            "and '-', none starting with '.'"
        )
    return key


class ObjectStream(Iterator[bytes]):
    """The chunks of one stored object. Releases its file or connection once exhausted, on an
    error, or when closed (use it as a context manager when it may not be read to the end)."""

    def __init__(self, chunks: Generator[bytes, None, None], release: Callable[[], None]) -> None:
        self._chunks = chunks
        self._release = release
        self._closed = False

    def __iter__(self) -> ObjectStream:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except BaseException:  # StopIteration included: the end releases the resource too
            self.close()
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._chunks.close()
            self._release()

    def __enter__(self) -> ObjectStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ObjectStorage(Protocol):
    def ensure_ready(self) -> None:
        """Create the bucket / folder if missing (idempotent)."""

    def ping(self) -> None:
        """Raise StorageUnavailable quickly when the storage cannot be used."""

    def put_file(self, key: str, path: Path, *, size: int, sha256: str, content_type: str = "application/pdf") -> None:
        """Store the file under the key, streaming it. The caller vouches for size and sha256:
        a mismatch raises ValueError and stores nothing (on S3 the endpoint checks the hash).
        An object already stored under the key with that size is kept (keys are
        content-addressed)."""

    def open_stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ObjectStream:
        """Open the object for reading (ObjectNotFound raised here, before any chunk)."""

    def stat(self, key: str) -> StoredObject: ...

    def delete(self, key: str) -> None:
        """Delete the object; no error if it is missing."""

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]: ...


class LocalFolderStorage:
    """Objects as files under a root folder: a key is a relative path."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root).resolve()

    @property
    def root(self) -> Path:
        return self._root

    def ensure_ready(self) -> None:
        with _local_errors():
            self._root.mkdir(parents=True, exist_ok=True)

    def ping(self) -> None:
        if not self._root.is_dir() or not os.access(self._root, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"storage folder {self._root} is missing or not writable")

    def put_file(self, key: str, path: Path, *, size: int, sha256: str, content_type: str = "application/pdf") -> None:
        target = self._path_of(key)
        _check_declared_file(path, size=size, sha256=sha256)
        self.ping()  # like a missing bucket: never recreate a missing root behind ensure_ready
        with _local_errors():
            if _regular_file_size(target) == size:
                return
            target.parent.mkdir(parents=True, exist_ok=True)
            self._write_atomically(path, target, sha256)

    def open_stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ObjectStream:
        path = self._path_of(key)
        with _local_errors(key):
            file = path.open("rb")
        return ObjectStream(_file_chunks(file, chunk_size), file.close)

    def stat(self, key: str) -> StoredObject:
        path = self._path_of(key)
        with _local_errors(key):
            info = path.stat()
        if not stat_mode.S_ISREG(info.st_mode):
            raise ObjectNotFound(key)
        return _stored_object(key, info)

    def delete(self, key: str) -> None:
        path = self._path_of(key)
        with _local_errors():
            path.unlink(missing_ok=True)

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        directory, _, _ = _validate_prefix(prefix).rpartition("/")
        start = self._path_of(directory) if directory else self._root
        self.ping()
        for folder, subfolders, files in os.walk(start):
            # Sorted like an S3 listing; names starting with "." are temporary files.
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            for name in sorted(files):
                key = Path(folder, name).relative_to(self._root).as_posix()
                if not name.startswith(".") and key.startswith(prefix):
                    try:
                        yield self.stat(key)
                    except ObjectNotFound:  # deleted while listing
                        continue

    def _path_of(self, key: str) -> Path:
        path = (self._root / validate_object_key(key)).resolve()
        # The key syntax already excludes "..": this catches symlinks that lead out of the root.
        if not path.is_relative_to(self._root):
            raise ValueError(f"object key {key!r} leads outside the storage folder")
        return path

    @staticmethod
    def _write_atomically(source_path: Path, target: Path, sha256: str) -> None:
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        try:
            with source_path.open("rb") as source, temporary.open("xb") as sink:
                digest = _copy_and_hash(source, sink)
                sink.flush()
                os.fsync(sink.fileno())
            if digest != sha256:
                raise ValueError(f"file content has SHA-256 {digest}, not the declared {sha256}")
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)


class MinioStorage:
    """Objects in one bucket of an S3 endpoint (MinIO, AWS S3, …) through the `minio` SDK."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str = "us-east-1",
        timeout_s: float = 5.0,
    ) -> None:
        host, secure = parse_s3_endpoint(endpoint, secure)
        self._bucket = bucket
        self._region = region
        self._credentials = Credentials(access_key, secret_key)
        self._bucket_url = urlunsplit(("https" if secure else "http", host, f"/{bucket}", "", ""))
        self._http = _http_pool(timeout_s)
        self._client = Minio(
            host,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=self._http,
        )

    @property
    def bucket(self) -> str:
        return self._bucket

    def ensure_ready(self) -> None:
        with _s3_errors():
            if self._client.bucket_exists(self._bucket):
                return
            try:
                self._client.make_bucket(self._bucket, location=self._region)
            except S3Error as error:
                if error.code != "BucketAlreadyOwnedByYou":  # another replica was faster
                    raise

    def ping(self) -> None:
        with _s3_errors():
            exists = self._client.bucket_exists(self._bucket)
        if not exists:
            raise StorageUnavailable(f"bucket {self._bucket!r} does not exist")

    def put_file(self, key: str, path: Path, *, size: int, sha256: str, content_type: str = "application/pdf") -> None:
        validate_object_key(key)
        _check_declared_file(path, size=size, sha256=sha256)
        with path.open("rb") as body, _s3_errors():
            self._put_signed(key, body, size=size, sha256=sha256, content_type=content_type)

    def open_stream(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> ObjectStream:
        validate_object_key(key)
        with _s3_errors(key):
            response = self._client.get_object(self._bucket, key)

        def release() -> None:
            response.close()
            response.release_conn()

        return ObjectStream(_response_chunks(response, chunk_size), release)

    def stat(self, key: str) -> StoredObject:
        validate_object_key(key)
        with _s3_errors(key):
            found = self._client.stat_object(self._bucket, key)
        return StoredObject(key=key, size=found.size, last_modified=found.last_modified)

    def delete(self, key: str) -> None:
        validate_object_key(key)
        with _s3_errors():
            self._client.remove_object(self._bucket, key)

    def list_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        _validate_prefix(prefix)
        with _s3_errors():
            for found in self._client.list_objects(self._bucket, prefix=prefix, recursive=True):
                yield StoredObject(key=found.object_name, size=found.size, last_modified=found.last_modified)

    def _put_signed(self, key: str, body: BinaryIO, *, size: int, sha256: str, content_type: str) -> None:
        # The SDK's put_object reads whole parts (>= 5 MiB, several in parallel) into memory.
        # This single PUT streams the open file instead, and signs the known SHA-256 as the
        # payload hash, so MinIO / S3 refuse a body that does not match it. It is conditional
        # (If-None-Match: *) rather than preceded by a HEAD: S3 spends about as much on a HEAD
        # as on the PUT of a certificate, and new content, the common case, would pay for both.
        url = urlsplit(f"{self._bucket_url}/{quote(key)}")
        date = s3_time.utcnow()
        headers = sign_v4_s3(
            method="PUT",
            url=url,
            region=self._region,
            headers={
                "Host": url.netloc,
                "Content-Type": content_type,
                "Content-Length": str(size),
                "If-None-Match": "*",
                "x-amz-content-sha256": sha256,
                "x-amz-date": s3_time.to_amz_date(date),
            },
            credentials=self._credentials,
            content_sha256=sha256,
            date=date,
        )
        response = self._http.urlopen("PUT", urlunsplit(url), body=body, headers=headers)
        if response.status in (HTTPStatus.OK, HTTPStatus.PRECONDITION_FAILED):  # stored, or already there
            return
        if "xml" in response.headers.get("content-type", "") and response.data:
            raise S3Error.fromxml(response)
        raise InvalidResponseError(
            response.status,
            response.headers.get("content-type"),
            response.data.decode(errors="replace"),
        )


def storage_from_settings(
    *,
    s3_endpoint: str,
    s3_access_key: str,
    s3_secret_key: str,
    s3_bucket: str,
    s3_secure: bool,
    s3_region: str,
    data_dir: Path,
) -> ObjectStorage:
    """MinIO / S3 when an endpoint is configured, else a folder under the data directory."""
    if not s3_endpoint.strip():
        return LocalFolderStorage(Path(data_dir) / "files")
    return MinioStorage(
        endpoint=s3_endpoint.strip(),
        access_key=s3_access_key,
        secret_key=s3_secret_key,
        bucket=s3_bucket,
        secure=s3_secure,
        region=s3_region,
    )


def parse_s3_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """Accept "host:port" (security from `secure`) or "http(s)://host:port" (from the scheme)."""
    if "://" not in endpoint:
        return endpoint, secure
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
        raise ValueError(f"S3 endpoint must be host:port or http(s)://host:port, not {endpoint!r}")
    return parts.netloc, parts.scheme == "https"


# S3 error codes of a body that does not match its signed SHA-256 (MinIO, AWS S3).
_PAYLOAD_MISMATCH_CODES = frozenset({"XAmzContentSHA256Mismatch", "BadDigest"})


@contextmanager
def _s3_errors(key: str | None = None) -> Iterator[None]:
    """Translate SDK and transport errors into the port's errors."""
    try:
        yield
    except S3Error as error:
        if key is not None and error.code == "NoSuchKey":
            raise ObjectNotFound(key) from error
        if error.code in _PAYLOAD_MISMATCH_CODES:
            raise ValueError(f"S3 refused the upload: {error.code}: {error.message}") from error
        raise StorageUnavailable(f"S3 error {error.code}: {error.message}") from error
    except (MinioException, urllib3.exceptions.HTTPError, OSError) as error:
        raise StorageUnavailable(f"S3 endpoint unusable: {error}") from error


@contextmanager
def _local_errors(key: str | None = None) -> Iterator[None]:
    """Translate file system errors into the port's errors."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as error:
        if key is None:
            raise StorageUnavailable(f"storage folder unusable: {error}") from error
        raise ObjectNotFound(key) from error
    except OSError as error:
        raise StorageUnavailable(f"storage folder unusable: {error}") from error


def _http_pool(timeout_s: float) -> urllib3.PoolManager:
    # Short timeouts and few retries: a dead endpoint must fail within seconds, not the SDK
    # default of minutes. Connect errors are retried once (a restarting server), as are read
    # errors (a pooled keep-alive connection the server closed meanwhile).
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
        retries=urllib3.Retry(
            total=3,
            connect=1,
            read=1,
            status=1,
            backoff_factor=0.2,
            status_forcelist=(500, 502, 503, 504),
        ),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )


def _require_sha256_hex(value: str) -> None:
    if not _SHA256_HEX_PATTERN.fullmatch(value):
        raise ValueError(f"not a SHA-256 in lowercase hex: {value!r}")


def _validate_prefix(prefix: str) -> str:
    directory, separator, tail = prefix.rpartition("/")
    if separator:
        validate_object_key(directory)
    if not _PREFIX_TAIL_PATTERN.fullmatch(tail):
        raise ValueError(f"invalid object key prefix {prefix!r}")
    return prefix


def _check_declared_file(path: Path, *, size: int, sha256: str) -> None:
    _require_sha256_hex(sha256)
    actual_size = path.stat().st_size
    if actual_size != size:
        raise ValueError(f"{path} has {actual_size} bytes, not the declared {size}")


def _regular_file_size(path: Path) -> int | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_size if stat_mode.S_ISREG(info.st_mode) else None


def _copy_and_hash(source: BinaryIO, sink: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := source.read(_COPY_BUFFER_SIZE):
        digest.update(chunk)
        sink.write(chunk)
    return digest.hexdigest()


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable, not only the file's bytes.
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _stored_object(key: str, info: os.stat_result) -> StoredObject:
    return StoredObject(
        key=key,
        size=info.st_size,
        last_modified=datetime.fromtimestamp(info.st_mtime, tz=UTC),
    )


def _file_chunks(file: BinaryIO, chunk_size: int) -> Generator[bytes, None, None]:
    with _local_errors():
        while chunk := file.read(chunk_size):
            yield chunk


def _response_chunks(response: urllib3.BaseHTTPResponse, chunk_size: int) -> Generator[bytes, None, None]:
    with _s3_errors():
        # Raw bytes as stored: never let the transport decode a Content-Encoding.
        yield from response.stream(chunk_size, decode_content=False)
