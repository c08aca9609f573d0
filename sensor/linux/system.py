"""This Linux host as /proc and the kernel report it: the boot clock records carry, process start
times, boot and machine ids, user and group names, and file locks (sensor.backend.system)."""
from __future__ import annotations

import fcntl
import grp
import os
import platform
import pwd
import signal
import time
from functools import lru_cache

# /proc/PID/stat reports start times in USER_HZ ticks; the kernel's start_boottime is in ns.
CLK_TCK = os.sysconf("SC_CLK_TCK")
NS_PER_TICK = 1_000_000_000 // CLK_TCK
RELOAD_SIGNAL = signal.SIGHUP  # systemctl reload


def boot_ns() -> int:
    """ns since boot, sleep included, never stepped: the event sequence's base."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


record_ns = boot_ns  # the kernel stamps records with CLOCK_BOOTTIME too


def unix_offset_ns() -> int:
    """Records' clock to the Unix epoch; re-read to follow NTP steps."""
    return time.time_ns() - boot_ns()


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: the process's start_boottime in USER_HZ ticks (comm may hold
    spaces, hence the split after its closing parenthesis); None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id") or "unknown"


def machine_id() -> str:
    return _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id")


def os_fields() -> dict:
    uname = platform.uname()
    family = next((line[3:].strip('"') for line in _read("/etc/os-release").splitlines() if line.startswith("ID=")),
                  platform.system().lower())
    return {"type": uname.system.lower(), "kernel": uname.release, "family": family}


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


@lru_cache(maxsize=1024)
def group_name(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return None


# what the process cache's seed asks psutil for, and the ids it makes of them
seed_attrs = ["pid", "ppid", "exe", "cmdline", "cwd", "uids", "gids"]


def seed_ids(info: dict) -> tuple:
    """(uid, euid, gid, egid, account) of a psutil info dict: numeric ids, no account."""
    uids, gids = info["uids"], info["gids"]
    return uids and uids.real, uids and uids.effective, gids and gids.real, gids and gids.effective, ()


UNKNOWN_IDS = (0, 0, 0, 0, ())  # what a poller records when psutil is denied the ids


def process_ids(p) -> tuple:
    """seed_ids of one psutil.Process (AccessDenied propagates)."""
    uids, gids = p.uids(), p.gids()
    return uids.real, uids.effective, gids.real, gids.effective, ()


def boost_priority(n: int) -> None:
    """Lowers this thread's nice value by n (threads started later inherit it); PermissionError
    without CAP_SYS_NICE."""
    os.setpriority(os.PRIO_PROCESS, 0, max(-20, os.getpriority(os.PRIO_PROCESS, 0) - n))


def lock(fd, wait: bool = True):
    """An exclusive advisory lock on an open file, dropped by the kernel when its holder dies;
    OSError when another holds it and `wait` is false."""
    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))


OPEN_FLAGS = os.O_CLOEXEC  # what the store adds to every os.open


def fsync_dir(path):
    """Makes a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_to_read(path) -> int:
    """A file descriptor to read `path`, refusing a symlink and never blocking on a FIFO."""
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)


def set_owner(path, uid: int, gid: int):
    """Gives a restored file its recorded owner."""
    os.chown(path, uid, gid)


# files whose loss breaks the host: the quarantine moves them only when a policy says so
SYSTEM_PREFIXES = ("/usr/", "/bin/", "/sbin/", "/lib", "/etc/", "/boot/", "/opt/sensor")


def system_file(path: str) -> bool:
    return path.startswith(SYSTEM_PREFIXES)
