"""`--upload azure`: closed zstd segments (events, CSV) into Azure Blob Storage from a thread."""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ..backend import system
from ..errors import ConfigError

log = logging.getLogger("sensor.fleet.azure")

STATE_FILE = "azure-uploaded"  # in DATA_DIR: one `DIR/NAME SIZE MD5` line per verified upload
SCAN_INTERVAL = 5.0  # closed files are also found by looking, e.g. CSV rotations and a previous run's
# what is uploaded: DATA_DIR/<dir>/<closed, compressed file>
CLOSED = {"events": re.compile(r"^events-.+\.jsonl\.zst$"), "csv": re.compile(r"^.+-\d{8}T\d{6}\.\d+Z\.csv\.zst$")}
_DAY = re.compile(r"-(\d{4})(\d{2})(\d{2})T\d{6}")


def blob_name(host_id: str, path: Path) -> str:
    """<host.id>/<YYYY>/<MM>/<DD>/<file name>, the day (UTC) being the one in the file's name."""
    m = _DAY.search(path.name)
    if m:
        y, mo, d = m.groups()
    else:  # not one of our names: its modification day
        y, mo, d = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y %m %d").split()
    return f"{host_id}/{y}/{mo}/{d}/{path.name}"


def file_md5(path: Path) -> tuple[int, bytes]:
    h, size = hashlib.md5(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.digest()


class UploadError(Exception):
    """An upload the service did not store as sent (size or MD5 differ)."""


class AzureUploader:
    """Learns of closed segments from the store (`closed`) and by scanning DATA_DIR; a thread
    uploads them oldest first, verifies each blob's size and MD5, and records it in
    DATA_DIR/azure-uploaded, so a restart resumes where it stopped. Failures are retried with
    backoff; the pipeline thread only adds names to a set."""

    def __init__(self, data_dir, host_id: str, connection_string: str, container: str = "sensor", *,
                 retry_max: float = 30.0, timeout: float = 60.0):
        from azure.storage.blob import BlobServiceClient

        # the SDK logs every request's headers at INFO: the sensor's own lines say what matters
        logging.getLogger("azure").setLevel(logging.WARNING)
        self.data_dir, self.host_id, self.container = Path(data_dir), host_id, container
        self.retry_max = retry_max
        try:  # retries are ours (with backoff, interruptible): the SDK's own would hold the thread
            self.service = BlobServiceClient.from_connection_string(
                connection_string, retry_total=0, connection_timeout=10, read_timeout=timeout)
        except ValueError as exc:
            raise ConfigError(f"azure.connection_string: {exc}",
                              hint="e.g. DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...;"
                                   "EndpointSuffix=core.windows.net") from None
        self.uploaded = self.failed = self.deleted_unuploaded = self.already_there = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._done: set[str] = set()  # "events/NAME" verified in Azure
        self._pending: set[str] = set()
        self._current: str | None = None
        self._gone_while_uploading = False
        self._container_ready = False
        self._wake, self._stop = threading.Event(), threading.Event()
        self._close_by = float("inf")
        self._state = self.data_dir / STATE_FILE
        self._load_state()
        self._thread = threading.Thread(target=self._main, name="azure-uploader", daemon=True)

    # -- the pipeline thread's side ------------------------------------------------------------

    def start(self):
        self._scan()
        self._thread.start()
        return self

    def closed(self, path: Path) -> None:
        """The store closed and compressed a segment."""
        key = self._key(path)
        with self._lock:
            if key not in self._done:
                self._pending.add(key)
        self._wake.set()

    def deleting(self, path: Path) -> None:
        """Retention is about to delete a segment: counted when it never reached Azure."""
        key = self._key(path)
        with self._lock:
            if key in self._done:
                return
            self._pending.discard(key)
            self.deleted_unuploaded += 1
            if key == self._current:
                self._gone_while_uploading = True
        log.warning("azure: retention deletes %s before it was uploaded (%d so far)", path.name,
                    self.deleted_unuploaded)

    def stats(self) -> dict:
        with self._lock:
            out = {"uploaded": self.uploaded, "pending": len(self._pending), "failed": self.failed,
                   "deleted_unuploaded": self.deleted_unuploaded}
        if self.last_error:
            out["error"] = self.last_error
        return out

    def close(self, timeout: float = 10.0):
        """Uploads what it can within `timeout` (the store's last segment included); the rest
        waits for the next start."""
        if self._thread.is_alive():
            self._close_by = time.monotonic() + timeout
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout + 15)
        left = self.stats()["pending"]
        if left:
            log.warning("azure: %d files wait in %s for the next start", left, self.data_dir)

    # -- state ---------------------------------------------------------------------------------

    def _key(self, path: Path) -> str:
        return f"{path.parent.name}/{path.name}"

    def _path(self, key: str) -> Path:
        return self.data_dir / key

    def _load_state(self):
        """Reads what earlier runs uploaded, forgetting files no longer here (retention took them)."""
        try:
            lines = self._state.read_text().splitlines()
        except FileNotFoundError:
            return
        kept = []
        for line in lines:
            key = line.split(" ", 1)[0]
            if line.count(" ") == 2 and self._path(key).exists():  # a torn last line is not a record
                self._done.add(key)
                kept.append(line)
        if len(kept) < len(lines):
            tmp = self._state.with_name(STATE_FILE + ".tmp")
            tmp.write_text("".join(f"{x}\n" for x in kept))
            os.replace(tmp, self._state)

    def _record(self, key: str, size: int, md5: bytes):
        fd = os.open(self._state, os.O_WRONLY | os.O_CREAT | os.O_APPEND | system.OPEN_FLAGS, 0o600)
        try:
            os.write(fd, f"{key} {size} {md5.hex()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _scan(self):
        found = set()
        for d, pattern in CLOSED.items():
            try:
                found.update(f"{d}/{n}" for n in os.listdir(self.data_dir / d) if pattern.match(n))
            except FileNotFoundError:
                pass
        with self._lock:
            self._pending |= found - self._done

    # -- the uploader thread -------------------------------------------------------------------

    def _main(self):
        backoff = 0.0
        while True:
            stopping = self._stop.is_set()
            if stopping and (time.monotonic() >= self._close_by or backoff):
                return  # down while stopping: what is left waits for the next start
            if not stopping:
                self._wake.wait(backoff or SCAN_INTERVAL)
                self._wake.clear()
            self._scan()
            with self._lock:
                todo = sorted(self._pending, key=lambda k: (k.split("/", 1)[1], k))
            try:
                for key in todo:
                    if self._stop.is_set() and time.monotonic() >= self._close_by:
                        return
                    self._upload(key)
                backoff = 0.0
            except Exception as exc:  # noqa: BLE001  the service, the network or the disk: retried
                with self._lock:
                    self.failed += 1
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                backoff = min(max(backoff * 2, 0.5), self.retry_max)
                log.warning("azure: upload failed (%s); retrying in %.1f s", self.last_error, backoff)
                if stopping:
                    return
            else:
                if self.last_error:
                    log.warning("azure: uploading again")
                    self.last_error = None
            if stopping:
                with self._lock:
                    if not self._pending:
                        return

    def _upload(self, key: str):
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
        from azure.storage.blob import ContentSettings

        path = self._path(key)
        with self._lock:
            if key not in self._pending:
                return  # deleted by retention meanwhile
            self._current, self._gone_while_uploading = key, False
        try:
            try:
                f = open(path, "rb")
            except FileNotFoundError:
                with self._lock:
                    self._pending.discard(key)
                return
            with f:
                size, md5 = file_md5(path)
                name = blob_name(self.host_id, path)
                if not self._container_ready:
                    try:
                        self.service.create_container(self.container)
                    except ResourceExistsError:
                        pass
                    self._container_ready = True
                blob = self.service.get_blob_client(self.container, name)
                try:
                    props = blob.get_blob_properties()  # uploaded before the state file recorded it
                    there = props.size == size and bytes(props.content_settings.content_md5 or b"") == md5
                except ResourceNotFoundError:
                    there = False
                if not there:
                    f.seek(0)
                    # validate_content: the service checks each request's MD5 on the way in
                    blob.upload_blob(f, length=size, overwrite=True, validate_content=True,
                                     content_settings=ContentSettings(content_type="application/zstd",
                                                                      content_md5=bytearray(md5)))
                    props = blob.get_blob_properties()
                    got = bytes(props.content_settings.content_md5 or b"")
                    if props.size != size or got != md5:
                        raise UploadError(f"{name}: stored {props.size} bytes, MD5 "
                                          f"{base64.b64encode(got).decode() or 'none'}; sent {size} bytes, MD5 "
                                          f"{base64.b64encode(md5).decode()}")
            self._record(key, size, md5)
            with self._lock:
                self._done.add(key)
                self._pending.discard(key)
                if there:
                    self.already_there += 1
                else:
                    self.uploaded += 1
                if self._gone_while_uploading:  # retention counted it, yet it arrived whole
                    self.deleted_unuploaded -= 1
            log.debug("azure: %s -> %s/%s (%d bytes)", key, self.container, name, size)
        finally:
            with self._lock:
                self._current = None


def uploader_from_config(cfg, host_id: str) -> AzureUploader | None:
    """The uploader `upload` asks for, or None; ConfigError for a value it does not know."""
    kind = (cfg["upload"] or "").strip()
    if not kind or kind == "none":
        return None
    if kind != "azure":
        raise ConfigError(f"upload: unknown {kind!r} (use azure)")
    conn = cfg["azure.connection_string"] or os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
    if not conn:
        raise ConfigError("upload azure: no connection string",
                          hint="give --azure-connection-string or set AZURE_STORAGE_CONNECTION_STRING")
    return AzureUploader(cfg["data_dir"], host_id, conn, cfg["azure.container"] or "sensor",
                         retry_max=cfg["azure.retry_max"])
