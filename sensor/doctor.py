"""`sensor doctor`: what this kernel and machine allow, found by trying, and what to do if not."""
from __future__ import annotations

import io
import json
import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import SensorError

PROBES = Path(__file__).resolve().parent / "bpf" / "probe.bpf.o"
TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
SECURITYFS = Path("/sys/kernel/security")
TRACEPOINTS = ("sched/sched_process_exec", "sched/sched_process_fork", "sched/sched_process_exit",
               "raw_syscalls/sys_enter", "raw_syscalls/sys_exit", "sock/inet_sock_set_state")
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
BTF_KIND_TYPEDEF = 8


@dataclass
class Check:
    name: str
    ok: bool
    required: bool
    detail: str
    fix: str = ""


def _tracefs() -> Path | None:
    # os.path.isdir, unlike Path.is_dir, answers False when an unprivileged user may not look
    return next((p for p in TRACEFS if os.path.isdir(p / "events")), None)


def _caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges() -> Check:
    caps = _caps()
    has = lambda c: bool(caps >> c & 1)  # noqa: E731
    ok = has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    return Check("privileges", ok, True, f"{who}; CAP_BPF={has(CAP_BPF)} CAP_PERFMON={has(CAP_PERFMON)} "
                 f"CAP_SYS_ADMIN={has(CAP_SYS_ADMIN)}", "" if ok else "run as root, or grant CAP_BPF and CAP_PERFMON")


def check_kernel() -> Check:
    release = platform.release()
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    ok = (major, minor) >= (5, 8)
    return Check("kernel", ok, True, f"Linux {release}" + ("" if ok else ": ring buffer and CO-RE need 5.8"),
                 "" if ok else "upgrade to a 5.8+ kernel")


def check_btf() -> Check:
    from .linux.libbpf import VMLINUX_BTF

    ok = VMLINUX_BTF.exists()
    return Check("btf", ok, True, f"{VMLINUX_BTF} " + ("present" if ok else "missing"),
                 "" if ok else "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distro kernels since 5.8)")


def check_libbpf() -> Check:
    from .linux import libbpf

    try:
        version = libbpf.version()
    except SensorError as exc:
        return Check("libbpf", False, True, str(exc), "apt-get install libbpf1")
    ok = tuple(int(x) for x in version.split(".")) >= (1, 0)
    return Check("libbpf", ok, True, f"libbpf.so.1 version {version}", "" if ok else "install libbpf 1.0 or later")


def check_tracefs() -> Check:
    where = _tracefs()
    if where:
        return Check("tracefs", True, False, f"mounted at {where}")
    mounted = next((p for p in TRACEFS if os.path.ismount(p)), None)
    if mounted:
        return Check("tracefs", False, False, f"mounted at {mounted} but not readable", "run as root")
    return Check("tracefs", False, False, "not mounted: tracepoint/... programs cannot attach (tp_btf ones can)",
                 "mount -t tracefs nodev /sys/kernel/tracing")


def check_tracepoints() -> list[Check]:
    from .linux.btf import Btf
    from .linux.libbpf import VMLINUX_BTF

    where = _tracefs()
    btf = None
    if where is None and VMLINUX_BTF.exists():
        try:
            btf = Btf.from_file(VMLINUX_BTF)
        except SensorError:
            btf = None
    checks = []
    for tp in TRACEPOINTS:
        if where:
            ok, how = os.path.isdir(where / "events" / tp), "in tracefs"
        elif btf:
            ok, how = btf.has_type(f"btf_trace_{tp.split('/')[1]}", BTF_KIND_TYPEDEF), "in kernel BTF"
        else:
            ok, how = False, "unknown (no tracefs, no BTF)"
        checks.append(Check(f"tracepoint {tp.replace('/', ':')}", ok, tp.startswith("sched/"),
                            ("present " if ok else "absent ") + how, "" if ok else "this kernel lacks the tracepoint"))
    if btf:
        btf.close()
    return checks


# program, check name, required, what it enables, what to do when refused
_PROGRAMS = (
    ("probe_tp_btf", "program tp_btf + ring buffer", True, "process events (tp_btf) and the ring buffer",
     "needs a 5.8+ BTF kernel and BPF permission"),
    ("probe_raw_tp", "program raw_tp", False, "syscall tracing (raw_syscalls)", "needs BPF permission"),
    ("probe_tracepoint", "program tracepoint", False, "syscalls:* tracepoints",
     "mount tracefs: mount -t tracefs nodev /sys/kernel/tracing"),
    ("probe_send_signal", "helper bpf_send_signal", False, "killing a blocked exec from sched_process_exec",
     "needs 5.3+ and a kernel that allows bpf_send_signal"),
    ("probe_fentry", "program fentry", False, "fentry/fexit probes",
     "kernel lockdown (integrity or confidentiality) refuses fentry/fexit; the sensor uses tracepoints instead"),
    ("probe_lsm", "program lsm", False, "BPF LSM enforcement (clean -EPERM on exec)",
     "needs `bpf` in the active LSMs and no lockdown refusal; the sensor falls back to bpf_send_signal"),
    ("probe_kprobe", "program kprobe", False, "kprobes",
     "kernel built without CONFIG_KPROBES; the sensor does not need them"),
)


def check_programs() -> list[Check]:
    from .linux.libbpf import BpfObject

    if not PROBES.exists():
        return [Check(name, False, req, f"{PROBES} missing", "build it: make bpf") for _, name, req, _, _ in _PROGRAMS]
    checks = []
    for prog, name, required, enables, fix in _PROGRAMS:
        try:
            with BpfObject(PROBES, programs=[prog]) as obj:
                obj.attach([prog])
            checks.append(Check(name, True, required, f"loads and attaches: {enables} available"))
        except SensorError as exc:
            reason = str(exc).splitlines()[0]
            checks.append(Check(name, False, required, f"refused ({reason}): {enables} unavailable", fix))
    return checks


def check_security() -> list[Check]:
    if not os.path.exists(SECURITYFS / "lsm"):
        return [Check("lockdown", False, False, "securityfs not mounted: cannot read lockdown or LSM list",
                      "mount -t securityfs nodev /sys/kernel/security")]
    try:
        lsms = (SECURITYFS / "lsm").read_text().strip()
        text = (SECURITYFS / "lockdown").read_text() if os.path.exists(SECURITYFS / "lockdown") else "[none]"
    except OSError as exc:
        return [Check("lockdown", False, False, f"cannot read securityfs: {exc.strerror}", "run as root")]
    mode = text[text.index("[") + 1:text.index("]")] if "[" in text else text.strip()
    return [
        Check("lockdown", True, False, f"lockdown={mode}" +
              (": fentry/fexit and LSM programs may be refused" if mode != "none" else "")),
        Check("lsm", True, False, f"active LSMs: {lsms}; bpf " + ("listed" if "bpf" in lsms.split(",") else "not listed")),
    ]


def run_checks() -> list[Check]:
    checks = [check_privileges(), check_kernel(), check_btf(), check_libbpf(), check_tracefs()]
    checks += check_tracepoints()
    checks += check_security()
    if checks[0].ok and checks[2].ok and checks[3].ok:
        checks += check_programs()
    checks.append(Check("enforcement mode", True, False, f"in-kernel exec blocking uses: {mode_of(checks)}"))
    return checks


def mode_of(checks: list[Check]) -> str:
    ok = {c.name: c.ok for c in checks}
    if ok.get("program lsm"):
        return "lsm"
    if ok.get("helper bpf_send_signal"):
        return "send_signal"
    return "none"


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.required and not c.ok for c in checks) else 0


def report(checks: list[Check], as_json: bool = False) -> str:
    if as_json:
        return json.dumps({"ok": exit_code(checks) == 0, "mode": mode_of(checks),
                           "checks": [asdict(c) for c in checks]}, indent=2)
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sensor doctor", title_justify="left")
    for col in ("", "check", "result", "what to do"):
        table.add_column(col)
    for c in checks:
        mark = "[green]✓[/]" if c.ok else ("[red]✗[/]" if c.required else "[yellow]–[/]")
        table.add_row(mark, c.name, c.detail, c.fix)
    console = Console(file=io.StringIO(), width=max(100, shutil.get_terminal_size((160, 24)).columns))
    console.print(table)
    console.print("the sensor can run" if exit_code(checks) == 0 else "the sensor cannot run: fix the ✗ lines")
    return console.file.getvalue().rstrip()
