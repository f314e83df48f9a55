"""Checks that an uploaded certificate is a safe, readable PDF, within bounded time and memory.

Uploads are spooled to a temporary file while hashed (`spool_upload`); `PdfInspector` then parses
the file in a persistent pool of worker processes that have a memory limit and a deadline, so a
hostile file costs at most one worker process, never the server. The same bytes always get the
same verdict, so the facts of recently accepted files are remembered by their SHA-256.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import os
import queue
import resource
import signal
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from types import TracebackType

from services.certificate.pdfcheck_rules import PdfFacts, PdfRejected, check_pdf
from shared.lru import LruMap

__all__ = ["PdfFacts", "PdfInspector", "PdfRejected", "SpooledFile", "spool_upload"]

log = logging.getLogger(__name__)

# The forkserver imports this module, and so pypdf, once; workers forked from it start ready.
_WORKER_MODULE = __name__
_WORKER_START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SpooledFile:
    """An upload written to a temporary file; leaving the `with` block deletes the file."""

    path: Path
    sha256: str
    size: int

    def __enter__(self) -> SpooledFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.path.unlink(missing_ok=True)


async def spool_upload(chunks: AsyncIterator[bytes], directory: Path, max_bytes: int) -> SpooledFile:
    """Write the upload to a temporary file in `directory`, hashing it on the way.

    Stops reading and raises PdfRejected(file_too_large) as soon as the upload passes
    `max_bytes`; the partial file is deleted on any failure.
    """
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=directory, prefix="upload-", suffix=".pdf")
    path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        # Plain writes: a chunk lands in the page cache in microseconds, less than a thread hop.
        with open(descriptor, "wb") as file:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise PdfRejected.file_too_large(max_bytes)
                digest.update(chunk)
                file.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return SpooledFile(path=path, sha256=digest.hexdigest(), size=size)


class PdfInspector:
    """Checks PDF files in `workers` long-lived processes, each limited in memory and time.

    `inspect` blocks the calling thread (call it from a thread pool in async code). The
    deadline counts from the moment a worker takes the file, not from a wait for a free one.
    Workers start through a forkserver, which imports the program's main module like any
    non-fork multiprocessing start: it must be import-safe (`if __name__ == "__main__":`).
    """

    def __init__(
        self,
        *,
        max_bytes: int,
        timeout_s: float = 10.0,
        max_memory_bytes: int = 512 * 2**20,
        workers: int = 2,
        remembered_files: int = 0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        # Only acceptances: a refusal may come from a deadline that a busy machine made too short.
        self._accepted: LruMap[str, PdfFacts] = LruMap(remembered_files)
        self._idle: queue.SimpleQueue[_WorkerProcess] = queue.SimpleQueue()
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([_WORKER_MODULE])
        self._workers = [_WorkerProcess(context, max_memory_bytes) for _ in range(workers)]
        for worker in self._workers:
            self._idle.put(worker)

    def inspect(self, path: Path, *, sha256: str | None = None) -> PdfFacts:
        """Return the facts of the PDF at `path`, or raise PdfRejected saying what is wrong.

        `sha256` is the file's hash as the caller computed it from the bytes (`spool_upload`
        does): a file with the hash and size of one accepted before is not parsed again.
        """
        size = path.stat().st_size
        if size > self._max_bytes:
            raise PdfRejected.file_too_large(self._max_bytes)
        known = self.remembered(sha256, size) if sha256 is not None else None
        if known is not None:
            return known
        worker = self._idle.get()
        try:
            facts = worker.check(path, sha256, self._timeout_s)
        finally:
            self._idle.put(worker)
        self._accepted.put(facts.sha256, facts)
        return facts

    def remembered(self, sha256: str, size: int) -> PdfFacts | None:
        """The facts of an accepted file with this hash and size, if remembered (no parsing, no waiting)."""
        known = self._accepted.get(sha256)
        return known if known is not None and known.size == size else None

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()

    def __enter__(self) -> PdfInspector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _WorkerProcess:
    """One worker process, reused file after file until it overruns its deadline or dies."""

    def __init__(self, context: BaseContext, max_memory_bytes: int) -> None:
        self._context = context
        self._max_memory_bytes = max_memory_bytes
        self._executor: ProcessPoolExecutor | None = None
        self._pid: int | None = None
        self._start()

    def _start(self) -> None:
        self._executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=self._context,
            initializer=_prepare_worker,
            initargs=(self._max_memory_bytes,),
        )
        try:
            # Waiting for the pid proves the worker is up, so no file's deadline pays for a start.
            self._pid = self._executor.submit(os.getpid).result(timeout=_WORKER_START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def check(self, path: Path, sha256: str | None, timeout_s: float) -> PdfFacts:
        if self._executor is None:  # the last restart failed; try again
            self._start()
        assert self._executor is not None
        future = self._executor.submit(check_pdf, path, sha256)
        try:
            return future.result(timeout=timeout_s)
        except (TimeoutError, BrokenProcessPool, MemoryError) as failure:
            log.warning("pdf check worker replaced after %s", type(failure).__name__)
            if isinstance(failure, TimeoutError):
                self._kill()
            self.stop()
            self._start()
            raise PdfRejected("pdf_too_complex") from failure

    def _kill(self) -> None:
        # A worker stuck in a parse never comes back for a shutdown request: end it.
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None
        self._pid = None


def _prepare_worker(max_memory_bytes: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = max_memory_bytes if hard == resource.RLIM_INFINITY else min(max_memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    # pypdf logs every repair it attempts; the verdict says all that matters here.
    logging.getLogger("pypdf").setLevel(logging.CRITICAL)
