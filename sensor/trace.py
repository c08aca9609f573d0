"""`sensor trace`: record every syscall of chosen processes (and their children) to a directory."""
from __future__ import annotations

import os
import platform
import select
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

from . import __version__, syscalls, wire
from .errors import SensorError
from .host import Host
from .processes import ProcessTable
from .records import ProcessExec, ProcessExit, ProcessFork
from .schema import Stamper, exit_fields, rfc3339, text
from .shutdown import StopFlag, stop_on
from .tracefile import CHECKPOINT_SECONDS, Comms, Spill, TraceWriter

# after a batch smaller than this, wait this long before reading again
LINGER_RECORDS, LINGER_SECONDS = 1 << 14, 0.01
READ_BATCHES = 1 << 12  # ring records (each up to 64 syscall records) per read
# Records are parked (tracefile.Spill) instead of encoded while the CPUs are this busy and
# records arrive this fast; parked ones are encoded once the CPUs have this much idle again.
PARK_IDLE, PARK_RATE, UNPARK_IDLE = 0.05, 500_000, 0.2


@dataclass
class TraceOptions:
    out: Path
    pids: list[int] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    follow_forks: bool = True
    syscalls: str | None = None
    args: bool = False
    label: str | None = None
    duration: float | None = None
    ring_buffer_bytes: int = 32 << 20
    park: str = "auto"  # auto | always | never: see Spill
    progress: bool = True


def _tgid(pid: int) -> int:
    """The process a pid (or thread id) belongs to; all its threads are traced."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    raise SensorError(f"--pid {pid}: no such process")


def _cpu_idle_total() -> tuple[float, float]:
    """Seconds all CPUs have been idle, and in all, since boot."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    return idle, sum(t)


def _proc_comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return text(f.read().rstrip(b"\n"))[0]
    except OSError:
        return None


def launch_stopped(argv: list[str]) -> tuple[int, int]:
    """Forks a child that waits on a pipe before exec, so tracing is in place before it runs.

    Returns (pid, fd): writing to fd releases the child into execv.
    """
    exe = shutil.which(argv[0])
    if exe is None:
        raise SensorError(f"command not found: {argv[0]}")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python-level cleanup may run here
        try:
            os.close(w)
            if os.read(r, 1) == b"x":
                os.close(r)
                os.execv(exe, argv)
        finally:
            os._exit(127)
    os.close(r)
    return pid, w


class TraceSession:
    def __init__(self, opts: TraceOptions):
        self.opts = opts
        self.host = Host()
        self.table = ProcessTable(self.host)
        self.stamper = Stamper(self.host)
        self.comms = Comms()
        self.wanted = syscalls.resolve(opts.syscalls) if opts.syscalls else None
        self.child: int | None = None
        self.exit_code: int | None = None
        self.pids: list[int] = []
        self.captured = 0
        self._sources = []
        self._final_lost: int | None = None
        self.spill: Spill | None = None
        self.parking = False
        self.spill_peak_bytes = 0

    def start(self):
        from .linux.process import ProcessSource
        from .linux.syscall import SyscallSource

        opts = self.opts
        if not opts.pids and not opts.command:
            raise SensorError("nothing to trace", hint="give --pid PID or -- COMMAND ARGS")
        tgids = [_tgid(p) for p in opts.pids]
        self.table.seed()
        self.procs = ProcessSource(only_traced=True, follow_forks=opts.follow_forks).start()
        self._sources.append(self.procs)
        self.syscalls = SyscallSource(self.procs.trace_maps(), wanted=self.wanted, with_args=opts.args,
                                      ring_buffer_bytes=opts.ring_buffer_bytes).start()
        self._sources.append(self.syscalls)
        self.writer = TraceWriter(opts.out, opts.args, self.host.boot_offset_ns)
        if opts.park != "never":
            self.spill = self.writer.spill = Spill(opts.out / ".syscalls.spill", self.syscalls.dtype)
        self.parking = opts.park == "always"
        # since when records are counted for pacing, how many, and the CPU times then
        self._pace_since, self._pace_read, self._pace_cpu = time.monotonic(), 0, _cpu_idle_total()
        traced = self.procs.traced()
        now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        for tgid in tgids:
            traced.update(tgid, bytes([wire.TRACE_ON]))
            proc = self.table.find(tgid)
            self.comms.set(tgid, 0, _proc_comm(tgid) or "", proc.ppid if proc else None)
        self.pids = list(tgids)
        if opts.command:
            self.child, release = launch_stopped(opts.command)
            traced.update(self.child, bytes([wire.TRACE_ARMED]))
            self.comms.set(self.child, 0, os.path.basename(opts.command[0])[:15], os.getpid())
            self.pids.append(self.child)
            os.write(release, b"x")
            os.close(release)
        self.start_ns = time.time_ns()
        self.started = now
        self.writer.checkpoint(self.metadata(self.start_ns, "recording"))
        self._next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
        print(f"sensor trace: tracing pids {', '.join(map(str, self.pids))} into {opts.out}", file=sys.stderr,
              flush=True)
        return self

    def _drain_processes(self) -> bool:
        """Writes the process events the kernel holds; True if a traced process exited."""
        exited = False
        while True:
            records = self.procs.poll()
            for r in records:
                exited |= isinstance(r, ProcessExit)
                if isinstance(r, ProcessExec):
                    self.comms.set(r.pid, r.ts_ns, text(r.comm)[0], r.ppid)
                elif isinstance(r, ProcessFork) and not r.thread:
                    parent = self.comms.names.get(r.pid)
                    self.comms.set(r.child_pid, r.ts_ns, parent[1][-1] if parent else text(r.comm)[0], r.pid)
                event = self.table.handle(r)
                if event is not None:
                    self.writer.process_event(self.stamper.stamp(event, r.ts_ns))
            if len(records) < 1 << 16:
                return exited

    def _drain_syscalls(self) -> int:
        """Reads what the ring holds; returns how many records."""
        n = 0
        while True:
            batch = self.syscalls.poll(READ_BATCHES)
            n += self._take(batch)
            # a short read: the ring held no more; under a storm it never is: checkpoint anyway
            if len(batch) < READ_BATCHES or time.monotonic() >= self._next_checkpoint:
                return n

    def _take(self, batch: np.ndarray) -> int:
        """Records from the kernel: parked while the CPUs are busy (and after others still
        parked, to keep their order), else encoded now."""
        if not len(batch):
            return 0
        self.captured += len(batch)
        if self.spill is not None and (self.parking or len(self.spill)):
            if not len(self.spill):
                # what waits is written first: a segment then never holds records from before
                # parking followed by parked ones, which a kill could separate (Spill.commit)
                self.writer.flush(self.comms)
            try:
                self.spill.put(batch)
                return len(batch)
            except OSError as exc:
                print(f"sensor trace: cannot park records in {self.spill.path} ({exc.strerror}); "
                      "encoding them as they come", file=sys.stderr)
                self._unpark()
                self._drop_spill()
        self._encode(batch)
        return len(batch)

    def _encode(self, batch: np.ndarray):
        for pid in np.unique(batch["pid"]):
            if not self.comms.known(int(pid)):  # e.g. its fork record was lost
                self.comms.set(int(pid), 0, _proc_comm(int(pid)) or "")
        self.writer.add(batch, self.comms)

    def _unpark(self, max_records: int | None = None) -> int:
        """Encodes parked records, oldest first: all of them, or about max_records."""
        n = 0
        while self.spill is not None and len(self.spill) and (max_records is None or n < max_records):
            part = self.spill.take(self.writer.row_group)
            self._encode(part)
            n += len(part)
        return n

    def _drop_spill(self):
        """Closes and removes the park file; its peak stays for metadata.json."""
        if self.spill is not None:
            self.spill_peak_bytes = self.spill.peak_bytes
            self.spill.close()
            self.spill = self.writer.spill = None

    def _pace(self, read: int):
        """After each read: park or encode, by how busy the CPUs are; or let records gather."""
        now = time.monotonic()
        self._pace_read += read
        if now - self._pace_since >= 0.1 and self.opts.park == "auto":
            cpu = _cpu_idle_total()
            idle = (cpu[0] - self._pace_cpu[0]) / max(cpu[1] - self._pace_cpu[1], 1e-9)
            rate = self._pace_read / (now - self._pace_since)
            if idle < PARK_IDLE and rate >= PARK_RATE:
                self.parking = True
            elif idle > UNPARK_IDLE:
                self.parking = False
            self._pace_since, self._pace_read, self._pace_cpu = now, 0, cpu
        if not self.parking and self.spill is not None and len(self.spill):
            self._unpark(self.writer.row_group)  # a row group at a time, then back to the ring
        elif read < LINGER_RECORDS:
            # the ring reads as ready with a single record in it: after a small batch let more
            # gather, so each read is a big one (fewer calls, less contention)
            time.sleep(LINGER_SECONDS)

    def _reap(self, block: bool = False):
        if self.child is None or self.exit_code is not None:
            return
        try:
            pid, status = os.waitpid(self.child, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            self.exit_code = exit_fields(status)["exit_code"]

    def run(self, stop: StopFlag | threading.Event) -> int:
        ep = select.epoll()
        for s in self._sources:
            ep.register(s.fileno(), select.EPOLLIN)
        deadline = time.monotonic() + self.opts.duration if self.opts.duration else None
        traced = self.procs.traced()
        progress = Progress(self) if self.opts.progress else None
        next_check = 0.0
        try:
            if progress:
                progress.start()
            while not stop.is_set():
                ep.poll(0.05)
                exited = self._drain_processes()
                self._pace(self._drain_syscalls())
                self._reap()
                now = time.monotonic()
                if now >= self._next_checkpoint:
                    self._checkpoint(now)
                if deadline and now >= deadline:
                    break
                if exited or now >= next_check:  # the last exit ends the trace at once
                    next_check = now + 0.1
                    if not traced.keys():  # every traced process has exited
                        break
        finally:
            ep.close()
            self.finish()
            if progress:
                progress.stop()
        return self._status()

    def _checkpoint(self, now: float):
        """Once a second: what waits in memory becomes a closed segment, and metadata.json says
        the trace is still being recorded, with its counts so far."""
        self._next_checkpoint = now + CHECKPOINT_SECONDS
        self.writer.flush(self.comms)
        self.writer.checkpoint(self.metadata(time.time_ns(), "recording"))

    def _status(self) -> int:
        if self.child is None:
            return 0
        if self.exit_code is None:
            deadline = time.monotonic() + 2
            while self.exit_code is None and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.02)
        if self.exit_code is None:
            print(f"sensor trace: {self.opts.command[0]} (pid {self.child}) still runs, no longer traced",
                  file=sys.stderr)
            return 128 + signal.SIGINT
        return self.exit_code

    def finish(self):
        """Detach, drain what the kernel still holds, then write every file completely."""
        for s in self._sources:
            s.detach()
        self._next_checkpoint = float("inf")  # drain to the end
        self._drain_processes()
        self._drain_syscalls()
        self._take(self.syscalls.held_back())
        self._reap()
        end_ns = time.time_ns()
        self._unpark()
        self._drop_spill()
        self.writer.flush(self.comms)
        self.writer.close(self.metadata(end_ns, "complete"))
        self._final_lost = self.lost()
        for s in self._sources:
            s.close()

    def abort(self):
        """Undo a start that failed half way: nothing stays loaded, no child is left stopped."""
        for s in self._sources:
            s.close()
        self._drop_spill()
        if self.child is not None:
            os.kill(self.child, signal.SIGKILL)
            self._reap(block=True)

    def lost(self) -> int:
        if self._final_lost is not None:
            return self._final_lost
        return self.syscalls.lost() + self.procs.stats()["lost_kernel"]

    def metadata(self, end_ns: int, status: str) -> dict:
        """status: recording (written at start and every second), complete (at the end), or
        cut short (set by `sensor trace recover` after a kill)."""
        o = self.opts
        return {
            "status": status,
            "command": o.command or None,
            "pids": self.pids,
            "label": o.label,
            "start": rfc3339(self.start_ns), "end": rfc3339(end_ns),
            "start_ns": self.start_ns, "end_ns": end_ns,
            "kernel": platform.release(), "arch": platform.machine(),
            "syscall_table": syscalls.arch(),
            "sensor_version": __version__,
            "captured": self.writer.rows,
            "lost": self.lost(),
            "lost_syscalls": self.syscalls.lost(),
            "held_batches": self.syscalls.held(),
            "parked_peak_bytes": self.spill_peak_bytes,
            "exit_code": self.exit_code,
            "boot_offset_ns": self.host.boot_offset_ns,
            "recorder_pid": os.getpid(),
            "files": {"syscalls": "syscalls.parquet", "processes": "processes.jsonl"},
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(o).items()
                        if k not in ("out", "progress", "command", "pids")},
        }


class Progress:
    """The live progress line: syscalls captured, rate, lost, elapsed."""

    def __init__(self, session: TraceSession):
        from rich.console import Console
        from rich.live import Live

        self.session = session
        self._mark = (time.monotonic(), 0, 0.0)
        self._live = Live(self, refresh_per_second=4, transient=False, console=Console(stderr=True))

    def __rich__(self):
        from rich.text import Text

        s = self.session
        now = time.monotonic()
        t0, c0, rate = self._mark
        count = s.captured
        if now - t0 >= 0.5:
            rate = (count - c0) / (now - t0)
            self._mark = (now, count, rate)
        lost = s.lost()
        line = Text(f"tracing · {count:,} syscalls · {rate:,.0f}/s · ")
        line.append(f"lost {lost:,}", style="bold red" if lost else "")
        parked = len(s.spill) if s.spill is not None else 0
        if parked:  # encoded once the CPUs are free again
            line.append(f" · {parked:,} parked")
        line.append(f" · {(time.clock_gettime_ns(time.CLOCK_BOOTTIME) - s.started) / 1e9:,.1f}s · Ctrl-C stops")
        return line

    def start(self):
        self._live.start()

    def stop(self):
        self._live.stop()


def run(opts: TraceOptions) -> int:
    session = TraceSession(opts)
    stop, handlers = stop_on((signal.SIGINT, signal.SIGTERM))
    try:
        try:
            session.start()
        except BaseException:
            session.abort()
            raise
        code = session.run(stop)
    finally:
        if not stop.is_set():  # else the rest of a burst stays ignored through the exit
            for sig, h in handlers.items():
                signal.signal(sig, h)
        stop.ignore_the_rest()
    lost = session.lost()
    print(f"sensor trace: {session.writer.rows:,} syscalls captured, {lost:,} lost, in {opts.out}",
          file=sys.stderr)
    if lost:
        print(f"sensor trace: WARNING: {lost:,} records were lost (ring buffer full); "
              f"try a larger --ring-buffer-bytes", file=sys.stderr)
    return code
