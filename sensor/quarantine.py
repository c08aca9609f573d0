"""The quarantine: files moved aside root-only with their hash and metadata, restorable."""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

from .backend import system
from .errors import SensorError
from .filehash import sha256_file as _sha256


class Quarantine:
    def __init__(self, data_dir):
        self.dir = Path(data_dir) / "quarantine"

    def _ensure(self):
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)

    def put(self, path: str, reason: dict, allow_system: bool = False) -> dict:
        """Moves path in; returns its record. Raises SensorError when it must not or cannot."""
        src = Path(os.path.realpath(path))
        if not allow_system and system.system_file(str(src)):  # moving it would break the host
            raise SensorError(f"{src} is a system file: not quarantined (allow_system: true overrides)")
        st = src.stat()
        if not src.is_file():
            raise SensorError(f"{src} is not a regular file")
        self._ensure()
        qid = uuid.uuid4().hex[:12]
        item = self.dir / qid
        item.mkdir(mode=0o700)
        record = {"id": qid, "original_path": str(src), "sha256": _sha256(src), "size": st.st_size,
                  "mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid, "mtime_ns": st.st_mtime_ns,
                  "quarantined_at": time.time(), "reason": reason}
        target = item / "file"
        try:
            os.rename(src, target)
        except OSError:  # another file system: copy, then remove the original
            shutil.copy2(src, target)
            os.unlink(src)
        os.chmod(target, 0)  # nobody executes or reads it by accident
        (item / "meta.json").write_text(json.dumps(record, indent=2))
        os.chmod(item / "meta.json", 0o600)
        return record

    def list(self) -> list[dict]:
        if not self.dir.is_dir():
            return []
        return sorted((json.loads((d / "meta.json").read_text()) for d in self.dir.iterdir()
                       if (d / "meta.json").exists()), key=lambda r: r["quarantined_at"])

    def restore(self, qid: str, to: str | None = None) -> dict:
        item = self.dir / qid
        if not (item / "meta.json").exists():
            raise SensorError(f"no quarantined item {qid!r}", hint="`sensor quarantine list` shows them")
        record = json.loads((item / "meta.json").read_text())
        dest = Path(to or record["original_path"])
        if dest.exists():
            raise SensorError(f"{dest} exists: not overwritten", hint="restore elsewhere with --to PATH")
        os.chmod(item / "file", 0o600)
        if _sha256(item / "file") != record["sha256"]:
            raise SensorError(f"quarantined file {qid} does not match its recorded sha256")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(item / "file"), dest)
        system.set_owner(dest, record["uid"], record["gid"])
        os.chmod(dest, record["mode"])
        os.utime(dest, ns=(record["mtime_ns"], record["mtime_ns"]))
        shutil.rmtree(item)
        return {**record, "restored_to": str(dest)}
