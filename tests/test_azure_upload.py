"""`--upload azure` against a real Azurite (build/node, installed by `make test`) on a free
loopback port: names, sizes and MD5s; the service down then up; a sensor restart; retention."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, wait_for
from fleetservers import free_port, stop

from sensor.csvsink import CsvSink
from sensor.fleet.azure_upload import AzureUploader
from sensor.host import Host
from sensor.schema import Stamper
from sensor.store import Store

AZURITE = ROOT / "build/node/node_modules/.bin/azurite-blob"
# Azurite's well-known development account (public, in its documentation)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite:
    """azurite-blob in a temp dir; stop() and start() again keep its port and its blobs."""

    def __init__(self, directory: Path):
        if not AZURITE.exists():
            raise AssertionError(f"{AZURITE} missing: `make azurite` installs it")
        self.dir, self.port, self.proc = directory, free_port(), None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.start()

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/devstoreaccount1;")

    def start(self):
        self.log = open(self.dir / "azurite.log", "ab")
        self.proc = subprocess.Popen([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                                      "--location", str(self.dir / "data"), "--skipApiVersionCheck", "--loose"],
                                     stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"azurite exited: {(self.dir / 'azurite.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return True
            except OSError:
                return False

        wait_for(ready, 30, 0.05, "azurite to listen")

    def stop(self):
        stop(self, signal.SIGTERM, 15)

    def blobs(self, container: str = "sensor") -> dict:
        """name -> (size, content MD5, etag, content), read back from the service."""
        from azure.storage.blob import BlobServiceClient

        c = BlobServiceClient.from_connection_string(self.connection_string).get_container_client(container)
        return {b.name: (b.size, bytes(b.content_settings.content_md5 or b""), b.etag,
                         c.download_blob(b.name).readall()) for b in c.list_blobs()}


@pytest.fixture
def azurite(tmp_path):
    server = Azurite(tmp_path / "azurite")
    try:
        yield server
    finally:
        server.stop()


def write_events(store: Store, n: int, stamper=Stamper(Host())):
    for i in range(n):
        store.write(stamper.stamp({"event": {"dataset": "process", "action": "exec", "category": ["process"]},
                                   "process": {"pid": 1000 + i, "name": "true", "args": ["/bin/true", str(i)]}}))


def local_files(data_dir: Path) -> dict:
    """'events/NAME' -> bytes of every closed, compressed file, from the disk."""
    return {f"{p.parent.name}/{p.name}": p.read_bytes()
            for d in ("events", "csv") for p in sorted((data_dir / d).glob("*.zst"))}


def expected_name(key: str) -> str:
    name = key.split("/", 1)[1]
    y, m, d = re.search(r"-(\d{4})(\d{2})(\d{2})T", name).groups()
    return f"{Host().id}/{y}/{m}/{d}/{name}"


def assert_all_uploaded(azurite: Azurite, data_dir: Path):
    files, blobs = local_files(data_dir), azurite.blobs()
    assert files
    assert set(blobs) == {expected_name(k) for k in files}
    for key, data in files.items():
        size, md5, _, content = blobs[expected_name(key)]
        assert (size, md5, content) == (len(data), hashlib.md5(data).digest(), data)
    return blobs


def uploader(azurite: Azurite, data_dir: Path, **kw) -> AzureUploader:
    return AzureUploader(data_dir, Host().id, azurite.connection_string, "sensor", **kw)


def test_segments_and_csvs_uploaded_with_names_sizes_and_md5s(tmp_path, azurite):
    data = tmp_path / "data"
    up = uploader(azurite, data)
    store = Store(data, segment_bytes=8 << 10, on_closed=up.closed, on_delete=up.deleting)
    up.start()
    csv = CsvSink(data / "csv", segment_bytes=4 << 10)
    stamper = Stamper(Host())
    for i in range(200):
        ev = stamper.stamp({"event": {"dataset": "process", "action": "exec", "category": ["process"]},
                            "process": {"pid": i, "name": "true", "args": ["/bin/true", str(i)]}})
        store.write(ev)
        csv.write(ev)
    store.close()
    csv.flush()
    for f in csv.files.values():
        csv.rotate(f)
    up.close(30)
    files = local_files(data)
    assert sum(k.startswith("events/") for k in files) >= 4 and any(k.startswith("csv/") for k in files)
    assert_all_uploaded(azurite, data)
    assert up.stats() == {"uploaded": len(files), "pending": 0, "failed": 0, "deleted_unuploaded": 0}
    # the state file lists each upload with its size and MD5
    state = {line.split()[0]: line.split()[1:] for line in (data / "azure-uploaded").read_text().splitlines()}
    assert state == {k: [str(len(v)), hashlib.md5(v).hexdigest()] for k, v in files.items()}


def test_azurite_down_then_up_uploads_everything_once(tmp_path, azurite):
    data = tmp_path / "data"
    up = uploader(azurite, data, retry_max=0.5)
    store = Store(data, segment_bytes=8 << 10, on_closed=up.closed, on_delete=up.deleting)
    up.start()
    write_events(store, 60)
    store.rotate()
    wait_for(lambda: up.stats()["uploaded"] >= 1 and up.stats()["pending"] == 0, 20, 0.05, "first uploads")
    before = azurite.blobs()
    azurite.stop()
    write_events(store, 120)
    store.rotate()
    wait_for(lambda: up.stats()["failed"] >= 2, 20, 0.05, "failed attempts while azurite is down")
    assert up.stats()["pending"] >= 2 and "error" in up.stats()
    azurite.start()
    wait_for(lambda: up.stats()["pending"] == 0, 30, 0.05, "the backlog uploaded")
    store.close()
    up.close(30)
    blobs = assert_all_uploaded(azurite, data)
    assert up.stats()["uploaded"] == len(blobs) and "error" not in up.stats()
    for name, (_, _, etag, _) in before.items():
        assert blobs[name][2] == etag  # uploaded before the outage, not again


def test_sensor_restart_resumes_without_uploading_twice(tmp_path, azurite, start_sensor):
    data = tmp_path / "data"
    flags = ("--upload", "azure", "--azure-connection-string", azurite.connection_string,
             "--store-segment-bytes", "16KiB", "--no-files-enabled", "--no-network-enabled",
             "--no-security-enabled", "--rules", "none", "--no-services-enabled", "--no-logins-enabled")
    s = start_sensor(*flags, data_dir=data)
    subprocess.run(["sh", "-c", "for i in $(seq 60); do /bin/true; done"], check=True)
    assert s.stop() == 0
    first = assert_all_uploaded(azurite, data)
    n1 = int(re.search(r"upload: (\d+) files uploaded, 0 wait", s.stderr()).group(1))
    assert n1 == len(first) >= 2
    s = start_sensor(*flags, data_dir=data)
    subprocess.run(["sh", "-c", "for i in $(seq 60); do /bin/true; done"], check=True)
    assert s.stop() == 0
    second = assert_all_uploaded(azurite, data)
    n2 = int(re.search(r"upload: (\d+) files uploaded, 0 wait", s.stderr()).group(1))
    assert n2 == len(second) - len(first) >= 1  # only the second run's files
    for name, (_, _, etag, _) in first.items():
        assert second[name][2] == etag
    health = [e["sensor"]["health"]["upload"] for e in s.events() if e["event"]["dataset"] == "sensor.health"]
    assert health and all(h["failed"] == h["deleted_unuploaded"] == 0 for h in health)
    assert "Request URL" not in s.stderr()  # the SDK's per-request logging stays quiet


def test_retention_deleting_unuploaded_segments_is_counted(tmp_path, azurite):
    data = tmp_path / "data"
    up = uploader(azurite, data, retry_max=0.5)
    store = Store(data, segment_bytes=4 << 10, retention_bytes=12 << 10, on_closed=up.closed,
                  on_delete=up.deleting)
    up.start()
    azurite.stop()
    seen = set()
    for _ in range(12):
        write_events(store, 20)
        store.rotate()
        seen |= {p.name for p in (data / "events").glob("*.zst")}
    left = {p.name for p in (data / "events").glob("*.zst")}
    deleted = seen - left
    assert len(deleted) >= 3
    wait_for(lambda: up.stats()["failed"] >= 1, 20, 0.05, "a failed attempt")
    assert up.stats()["deleted_unuploaded"] == len(deleted)
    assert up.stats()["pending"] == len(left)
    azurite.start()
    wait_for(lambda: up.stats()["pending"] == 0, 30, 0.05, "what is left uploaded")
    store.close()
    up.close(30)
    blobs = assert_all_uploaded(azurite, data)
    assert not {b.rsplit("/", 1)[1] for b in blobs} & deleted
    assert up.stats()["uploaded"] + up.stats()["deleted_unuploaded"] == len(seen | left | {
        p.name for p in (data / "events").glob("*.zst")})


def test_blob_uploaded_before_a_crash_is_recorded_not_sent_again(tmp_path, azurite):
    data = tmp_path / "data"
    up = uploader(azurite, data)
    store = Store(data, segment_bytes=8 << 10, on_closed=up.closed, on_delete=up.deleting)
    up.start()
    write_events(store, 60)
    store.close()
    up.close(30)
    first = assert_all_uploaded(azurite, data)
    (data / "azure-uploaded").unlink()  # as if killed between the upload and its record
    again = uploader(azurite, data).start()
    wait_for(lambda: (data / "azure-uploaded").exists()
             and len((data / "azure-uploaded").read_text().splitlines()) == len(first), 20, 0.05, "the records")
    again.close(30)
    assert again.stats() == {"uploaded": 0, "pending": 0, "failed": 0, "deleted_unuploaded": 0}
    assert again.already_there == len(first)
    assert {n: b[2] for n, b in assert_all_uploaded(azurite, data).items()} == {n: b[2] for n, b in first.items()}


def test_upload_azure_without_a_connection_string_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "AZURE_STORAGE_CONNECTION_STRING"}
    r = subprocess.run([sys.executable, "-m", "sensor", "run", "--data-dir", str(tmp_path / "d"), "--console", "off",
                        "--upload", "azure", "--duration", "1"], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 2
    assert "upload azure: no connection string" in r.stderr and "AZURE_STORAGE_CONNECTION_STRING" in r.stderr
    r = subprocess.run([sys.executable, "-m", "sensor", "run", "--data-dir", str(tmp_path / "d"), "--console", "off",
                        "--upload", "s3", "--duration", "1"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "upload: unknown 's3' (use azure)" in r.stderr
