"""The trace's `flags` column: names for the flag arguments, nothing hidden."""
import os
import signal
import socket

from sensor.syscall_flags import decode


def test_open_flags_name_every_bit_in_bit_order():
    assert decode("openat", [os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC]) == \
        "O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC"
    assert decode("open", [os.O_RDWR | os.O_TMPFILE]) == "O_RDWR|O_TMPFILE"  # not O_DIRECTORY too
    assert decode("openat", [os.O_RDONLY | os.O_SYNC]) == "O_RDONLY|O_SYNC"  # not O_DSYNC too
    assert decode("openat", [os.O_RDONLY | 0x40000000]) == "O_RDONLY|0x40000000"  # unknown bits stay


def test_other_calls():
    assert decode("mmap", [0, 0x22]) == "PROT_NONE|MAP_PRIVATE|MAP_ANONYMOUS"
    assert decode("mmap", [3, 0x12]) == "PROT_READ|PROT_WRITE|MAP_PRIVATE|MAP_FIXED"
    assert decode("clone", [0x01200000 | signal.SIGCHLD]) == "CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD"
    assert decode("unshare", [0x20000 | 0x40000000]) == "CLONE_NEWNS|CLONE_NEWNET"
    assert decode("socket", [socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK]) == \
        "AF_INET6|SOCK_DGRAM|SOCK_NONBLOCK"
    assert decode("faccessat", [0]) == "F_OK" and decode("access", [os.R_OK | os.X_OK]) == "R_OK|X_OK"
    assert decode("unlinkat", [0x200]) == "AT_REMOVEDIR" and decode("newfstatat", [0]) == "0"
    assert decode("wait4", [os.WNOHANG | 0x40000000]) == "WNOHANG|__WALL"
    assert decode("getppid", []) is None
    # flags are C ints: the upper half of the register is not theirs
    assert decode("openat", [0xFFFFFFFF00000000 | os.O_RDONLY]) == "O_RDONLY"
