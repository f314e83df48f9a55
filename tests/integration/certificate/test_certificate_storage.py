"""The object storage port, on both adapters: a local folder and S3 (moto, or S3_ENDPOINT)."""

from __future__ import annotations

import hashlib
import os
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from services.certificate.storage import (
    LocalFolderStorage,
    MinioStorage,
    ObjectNotFound,
    ObjectStorage,
    StorageUnavailable,
    certificate_object_key,
    storage_from_settings,
)

if TYPE_CHECKING:
    from tests.fixtures.s3 import S3Endpoint, S3Outage

PDF_CORPUS = Path(__file__).resolve().parents[3] / ".." / "shared" / "pdf-corpus"
OUTAGE_BOUND_S = 10.0
BIG_FILE_SIZE = 8 * 1024 * 1024
# Streaming keeps a few chunks in memory; reading the file whole would need all 8 MiB.
STREAMING_MEMORY_BOUND = BIG_FILE_SIZE // 8


def write_file(path: Path, content: bytes) -> tuple[Path, int, str]:
    path.write_bytes(content)
    return path, len(content), hashlib.sha256(content).hexdigest()


def put_bytes(storage: ObjectStorage, directory: Path, content: bytes, key: str | None = None) -> str:
    upload = directory / f"upload-{hashlib.md5(content).hexdigest()}"
    path, size, sha256 = write_file(upload, content)
    key = key or certificate_object_key(sha256)
    storage.put_file(key, path, size=size, sha256=sha256)
    return key


def read_all(storage: ObjectStorage, key: str) -> bytes:
    return b"".join(storage.open_stream(key))


def corpus_pdf() -> Path:
    (pdf,) = sorted(PDF_CORPUS.glob("004-*/*.pdf"))
    return pdf


def test_corpus_pdf_round_trip_is_byte_identical(object_storage: ObjectStorage) -> None:
    content = corpus_pdf().read_bytes()
    sha256 = hashlib.sha256(content).hexdigest()
    key = certificate_object_key(sha256)

    object_storage.put_file(key, corpus_pdf(), size=len(content), sha256=sha256)

    assert object_storage.stat(key).size == len(content)
    chunks = list(object_storage.open_stream(key, chunk_size=4096))
    assert b"".join(chunks) == content
    assert max(len(chunk) for chunk in chunks) <= 4096


def test_putting_a_key_again_keeps_the_stored_object(object_storage: ObjectStorage, tmp_path: Path) -> None:
    original = b"%PDF-1.7 original certificate"
    key = put_bytes(object_storage, tmp_path, original)
    put_bytes(object_storage, tmp_path, original, key)
    # Same size under the same key: content addressing says it is the same file, so no upload.
    put_bytes(object_storage, tmp_path, b"%PDF-1.7 imposter certificate", key)

    assert [found.key for found in object_storage.list_objects()] == [key]
    assert read_all(object_storage, key) == original


def test_stat_list_and_delete(object_storage: ObjectStorage, tmp_path: Path) -> None:
    contents = [b"first file", b"second file, longer", b"third"]
    keys = [put_bytes(object_storage, tmp_path, content) for content in contents]
    other_key = put_bytes(object_storage, tmp_path, b"not a certificate", "other/notes.txt")

    for key, content in zip(keys, contents, strict=True):
        found = object_storage.stat(key)
        assert (found.key, found.size) == (key, len(content))
        assert found.last_modified.tzinfo is not None
    listed = list(object_storage.list_objects())
    assert [found.key for found in listed] == sorted([*keys, other_key])
    assert {found.key: found.size for found in listed}[other_key] == len(b"not a certificate")
    assert [found.key for found in object_storage.list_objects("sha256/")] == sorted(keys)
    assert [found.key for found in object_storage.list_objects(keys[0][:13])] == [keys[0]]
    assert [found.key for found in object_storage.list_objects("oth")] == [other_key]

    object_storage.delete(keys[0])
    object_storage.delete(keys[0])  # deleting a missing object is no error

    with pytest.raises(ObjectNotFound):
        object_storage.stat(keys[0])
    assert [found.key for found in object_storage.list_objects("sha256/")] == sorted(keys[1:])


def test_missing_object_is_not_found(object_storage: ObjectStorage, tmp_path: Path) -> None:
    key = put_bytes(object_storage, tmp_path, b"present")
    missing = certificate_object_key(hashlib.sha256(b"absent").hexdigest())

    with pytest.raises(ObjectNotFound):
        object_storage.stat(missing)
    with pytest.raises(ObjectNotFound):
        object_storage.open_stream(missing)
    # A "folder" holding the stored object is no object either.
    with pytest.raises(ObjectNotFound):
        object_storage.stat(key.rsplit("/", 1)[0])


def test_closing_a_stream_early_stops_it(object_storage: ObjectStorage, tmp_path: Path) -> None:
    key = put_bytes(object_storage, tmp_path, os.urandom(300_000))

    with object_storage.open_stream(key, chunk_size=1024) as stream:
        assert len(next(stream)) == 1024
    with pytest.raises(StopIteration):
        next(stream)
    # The released file or connection does not block the next use of the same object.
    object_storage.delete(key)
    with pytest.raises(ObjectNotFound):
        object_storage.stat(key)


@pytest.mark.parametrize(
    "bad_sha256",
    ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" + "0" * 61, " " + "0" * 63],
)
def test_certificate_key_needs_a_lowercase_hex_sha256(bad_sha256: str) -> None:
    with pytest.raises(ValueError):
        certificate_object_key(bad_sha256)


def test_certificate_key_is_content_addressed() -> None:
    sha256 = hashlib.sha256(b"certificate").hexdigest()
    assert certificate_object_key(sha256) == f"sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"


BAD_KEYS = [
    "",
    "../escape.pdf",
    "/etc/passwd",
    "a/../../b",
    "a//b",
    "a/",
    "a\\b",
    ".hidden",
    "a/./b",
    "a\x00b",
    "a b",
    "x" * 1025,
]


@pytest.mark.parametrize("bad_key", BAD_KEYS)
def test_bad_keys_are_rejected(object_storage: ObjectStorage, tmp_path: Path, bad_key: str) -> None:
    path, size, sha256 = write_file(tmp_path / "upload.pdf", b"%PDF-1.7 key test")
    operations: list[Callable[[], object]] = [
        lambda: object_storage.put_file(bad_key, path, size=size, sha256=sha256),
        lambda: object_storage.open_stream(bad_key),
        lambda: object_storage.stat(bad_key),
        lambda: object_storage.delete(bad_key),
    ]
    for operation in operations:
        with pytest.raises(ValueError):
            operation()
    assert list(object_storage.list_objects()) == []


@pytest.mark.parametrize("bad_prefix", ["../", "/", "/sha256", "a//", "a/../", ".a/b", "a b"])
def test_bad_list_prefixes_are_rejected(object_storage: ObjectStorage, bad_prefix: str) -> None:
    with pytest.raises(ValueError):
        list(object_storage.list_objects(bad_prefix))


def test_local_storage_refuses_keys_leading_out_through_a_symlink(tmp_path: Path) -> None:
    storage = LocalFolderStorage(tmp_path / "files")
    storage.ensure_ready()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.pdf").write_bytes(b"not yours")
    (tmp_path / "files" / "link").symlink_to(outside)
    path, size, sha256 = write_file(tmp_path / "upload.pdf", b"%PDF-1.7 planted")

    with pytest.raises(ValueError):
        storage.stat("link/secret.pdf")
    with pytest.raises(ValueError):
        storage.open_stream("link/secret.pdf")
    with pytest.raises(ValueError):
        storage.put_file("link/planted.pdf", path, size=size, sha256=sha256)
    with pytest.raises(ValueError):
        storage.delete("link/secret.pdf")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.pdf"]


def test_wrong_declared_size_stores_nothing(object_storage: ObjectStorage, tmp_path: Path) -> None:
    path, size, sha256 = write_file(tmp_path / "upload.pdf", b"%PDF-1.7 sized")

    with pytest.raises(ValueError):
        object_storage.put_file(certificate_object_key(sha256), path, size=size + 1, sha256=sha256)
    assert list(object_storage.list_objects()) == []


def test_wrong_declared_sha256_stores_nothing(
    object_storage: ObjectStorage, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if isinstance(object_storage, MinioStorage):
        endpoint: S3Endpoint = request.getfixturevalue("s3_endpoint")
        if endpoint.is_moto:
            pytest.skip("moto does not check payload hashes; run with S3_ENDPOINT on MinIO")
    path, size, _ = write_file(tmp_path / "upload.pdf", b"%PDF-1.7 hashed")
    claimed = hashlib.sha256(b"something else").hexdigest()

    with pytest.raises(ValueError):
        object_storage.put_file(certificate_object_key(claimed), path, size=size, sha256=claimed)
    assert list(object_storage.list_objects()) == []


def test_local_storage_leaves_no_temporary_file_behind(tmp_path: Path) -> None:
    storage = LocalFolderStorage(tmp_path / "files")
    storage.ensure_ready()
    path, size, _ = write_file(tmp_path / "upload.pdf", b"%PDF-1.7 interrupted")
    claimed = hashlib.sha256(b"something else").hexdigest()
    key = certificate_object_key(claimed)

    with pytest.raises(ValueError):
        storage.put_file(key, path, size=size, sha256=claimed)
    put_bytes(storage, tmp_path, b"%PDF-1.7 complete")

    on_disk = [p for p in (tmp_path / "files").rglob("*") if p.is_file()]
    assert [p.relative_to(tmp_path / "files").as_posix() for p in on_disk] == [
        found.key for found in storage.list_objects()
    ]


def test_ensure_ready_creates_the_bucket_or_folder(new_object_storage: ObjectStorage, tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable):
        new_object_storage.ping()
    with pytest.raises(StorageUnavailable):
        put_bytes(new_object_storage, tmp_path, b"too early")

    new_object_storage.ensure_ready()
    new_object_storage.ensure_ready()  # idempotent

    new_object_storage.ping()
    key = put_bytes(new_object_storage, tmp_path, b"in time")
    assert read_all(new_object_storage, key) == b"in time"


def test_s3_endpoint_given_as_url(s3_endpoint: S3Endpoint, s3_bucket_name: str, tmp_path: Path) -> None:
    scheme = "https" if s3_endpoint.secure else "http"
    storage = MinioStorage(
        endpoint=f"{scheme}://{s3_endpoint.endpoint.split('://')[-1]}",
        access_key=s3_endpoint.access_key,
        secret_key=s3_endpoint.secret_key,
        bucket=s3_bucket_name,
        secure=not s3_endpoint.secure,  # the scheme wins
        region=s3_endpoint.region,
    )
    storage.ensure_ready()
    key = put_bytes(storage, tmp_path, b"via url")
    assert read_all(storage, key) == b"via url"


def test_s3_wrong_credentials_make_storage_unavailable(
    s3_endpoint: S3Endpoint, s3_bucket_name: str, tmp_path: Path
) -> None:
    s3_endpoint.storage(s3_bucket_name).ensure_ready()
    impostor = MinioStorage(
        endpoint=s3_endpoint.endpoint,
        access_key=s3_endpoint.access_key,
        secret_key=s3_endpoint.secret_key + "-wrong",
        bucket=s3_bucket_name,
        secure=s3_endpoint.secure,
        region=s3_endpoint.region,
    )

    with pytest.raises(StorageUnavailable):
        impostor.ping()
    with pytest.raises(StorageUnavailable):
        put_bytes(impostor, tmp_path, b"unsigned")
    assert list(s3_endpoint.storage(s3_bucket_name).list_objects()) == []


@pytest.mark.parametrize("endpoint", ["ftp://host:21", "http://host:9000/path", "http://"])
def test_malformed_s3_endpoint_is_refused(endpoint: str) -> None:
    with pytest.raises(ValueError):
        MinioStorage(endpoint=endpoint, access_key="a", secret_key="b", bucket="certificates")


def test_storage_from_settings_picks_the_adapter(s3_endpoint: S3Endpoint, s3_bucket_name: str, tmp_path: Path) -> None:
    settings = {
        "s3_access_key": s3_endpoint.access_key,
        "s3_secret_key": s3_endpoint.secret_key,
        "s3_bucket": s3_bucket_name,
        "s3_secure": s3_endpoint.secure,
        "s3_region": s3_endpoint.region,
        "data_dir": tmp_path / "var",
    }
    local = storage_from_settings(s3_endpoint="", **settings)
    remote = storage_from_settings(s3_endpoint=s3_endpoint.endpoint, **settings)

    assert isinstance(local, LocalFolderStorage)
    assert local.root == (tmp_path / "var" / "files").resolve()
    assert isinstance(remote, MinioStorage)
    for storage in (local, remote):
        storage.ensure_ready()
        key = put_bytes(storage, tmp_path, b"configured")
        assert read_all(storage, key) == b"configured"
    assert (tmp_path / "var" / "files" / key).read_bytes() == b"configured"


def test_s3_refusing_connections_fails_fast(s3_outage: S3Outage, tmp_path: Path) -> None:
    storage = s3_outage.endpoint.storage("drill")
    storage.ensure_ready()
    key = put_bytes(storage, tmp_path, b"stored before the outage")
    path, size, sha256 = write_file(tmp_path / "late.pdf", b"uploaded during the outage")
    operations: dict[str, Callable[[], object]] = {
        "ping": storage.ping,
        "ensure_ready": storage.ensure_ready,
        "put_file": lambda: storage.put_file(certificate_object_key(sha256), path, size=size, sha256=sha256),
        "open_stream": lambda: storage.open_stream(key),
        "stat": lambda: storage.stat(key),
        "delete": lambda: storage.delete(key),
        "list_objects": lambda: list(storage.list_objects()),
    }

    with s3_outage.refusing_connections():
        started = time.monotonic()
        for operation in operations.values():
            with pytest.raises(StorageUnavailable):
                operation()
        elapsed = time.monotonic() - started

    assert elapsed < OUTAGE_BOUND_S, f"{len(operations)} failing calls took {elapsed:.1f} s"
    # The endpoint is back (empty): the service recovers without being restarted.
    storage.ensure_ready()
    storage.ping()
    assert read_all(storage, put_bytes(storage, tmp_path, b"after")) == b"after"


def test_s3_not_responding_fails_within_the_timeout(s3_outage: S3Outage, tmp_path: Path) -> None:
    timeout_s = 0.5
    storage = s3_outage.endpoint.storage("drill", timeout_s=timeout_s)
    storage.ensure_ready()
    key = put_bytes(storage, tmp_path, b"kept through the freeze")

    with s3_outage.not_responding():
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            storage.ping()
        with pytest.raises(StorageUnavailable):
            storage.open_stream(key)
        elapsed = time.monotonic() - started

    # Each call: a timed-out read and one timed-out retry, plus slack; not the SDK's minutes.
    assert elapsed < 2 * (2 * timeout_s + 1.0), f"two calls to a hung endpoint took {elapsed:.1f} s"
    assert read_all(storage, key) == b"kept through the freeze"


@pytest.fixture
def big_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "big.pdf"
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for _ in range(BIG_FILE_SIZE // (1024 * 1024)):
            block = os.urandom(1024 * 1024)
            digest.update(block)
            file.write(block)
    return path, digest.hexdigest()


def peak_traced_memory(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_big_file_is_streamed_both_ways(object_storage: ObjectStorage, big_file: tuple[Path, str]) -> None:
    path, sha256 = big_file
    key = certificate_object_key(sha256)

    upload_peak = peak_traced_memory(lambda: object_storage.put_file(key, path, size=BIG_FILE_SIZE, sha256=sha256))
    read_back = hashlib.sha256()
    sizes: list[int] = []

    def download() -> None:
        for chunk in object_storage.open_stream(key):
            read_back.update(chunk)
            sizes.append(len(chunk))

    download_peak = peak_traced_memory(download)

    assert read_back.hexdigest() == sha256
    assert sum(sizes) == BIG_FILE_SIZE
    assert upload_peak < STREAMING_MEMORY_BOUND, f"upload peak {upload_peak} bytes"
    assert download_peak < STREAMING_MEMORY_BOUND, f"download peak {download_peak} bytes"
