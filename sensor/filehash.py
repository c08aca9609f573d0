"""Content hashes of files, read in chunks so size never matters."""
import hashlib
import os
import stat

from .backend import system
from .ratelimit import TokenBucket
from .schema import unescape


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ExecutableHasher:
    """sha256 of executables that file events show created, written or made executable, in user
    space, bounded: files over `max_bytes` and hashes beyond `per_second` are skipped and counted."""

    ACTIONS = ("create", "write", "chmod", "rename", "link")

    def __init__(self, max_bytes: int = 32 << 20, per_second: float = 20.0):
        self.max_bytes, self.per_second = max_bytes, per_second
        self._bucket = TokenBucket(per_second)
        self._seen: dict[tuple, str] = {}  # (dev, ino, size, mtime_ns) -> hash: unchanged files are not read again
        self.stats = {"hashed": 0, "too_large": 0, "rate_limited": 0, "unreadable": 0}

    def annotate(self, event: dict):
        f = event.get("file")
        if not f or event["event"].get("action") not in self.ACTIONS or not int(f.get("mode") or "0", 8) & 0o111:
            return
        path = os.fsencode(unescape(f["path"]) if "file.path" in event.get("sensor", {}).get("escaped", ()) else f["path"])
        try:
            fd = system.open_to_read(path)
        except OSError:
            self.stats["unreadable"] += 1
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            digest = self._seen.get(key)
            if digest is None:
                if st.st_size > self.max_bytes:
                    self.stats["too_large"] += 1
                    return
                if not self._bucket.take():
                    self.stats["rate_limited"] += 1
                    return
                h = hashlib.sha256()
                for chunk in iter(lambda: os.read(fd, 1 << 20), b""):
                    h.update(chunk)
                digest = self._seen[key] = h.hexdigest()
                self.stats["hashed"] += 1
                if len(self._seen) > 4096:
                    self._seen.pop(next(iter(self._seen)))
            f.setdefault("hash", {})["sha256"] = digest
        finally:
            os.close(fd)
