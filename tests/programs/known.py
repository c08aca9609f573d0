"""A program with a known sequence of syscalls, for the trace tests.

    known.py N_GETPPID PATH [--wait] [--threads T] [--depth D]

Listens on 127.0.0.1, calls getppid() N times, opens PATH, connects to its listener; with
--wait it first blocks until a line arrives on stdin (so a tracer can attach by pid); with
--depth D it forks a chain of D-1 descendants that do the same; with --threads T each process
also runs T threads that call getppid() N times each. Prints "pid port" per process.
"""
import os
import socket
import sys
import threading


def work(n: int, path: str):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    for _ in range(n):
        os.getppid()
    fd = os.open(path, os.O_RDONLY)
    os.close(fd)
    c = socket.socket()
    c.connect(("127.0.0.1", port))
    c.close()
    srv.close()
    return port


def main():
    n, path = int(sys.argv[1]), sys.argv[2]
    opts = sys.argv[3:]
    threads = int(opts[opts.index("--threads") + 1]) if "--threads" in opts else 0
    depth = int(opts[opts.index("--depth") + 1]) if "--depth" in opts else 1
    if "--wait" in opts:
        sys.stdin.readline()
    child = None
    if depth > 1:
        child = os.fork()
        if child == 0:
            args = [a for a in opts if a != "--wait"]
            if "--depth" in args:
                args[args.index("--depth") + 1] = str(depth - 1)
            os.execv(sys.executable, [sys.executable, __file__, str(n), path, *args])
    ts = [threading.Thread(target=lambda: [os.getppid() for _ in range(n)]) for _ in range(threads)]
    for t in ts:
        t.start()
    port = work(n, path)
    for t in ts:
        t.join()
    print(os.getpid(), port, flush=True)
    if child:
        os.waitpid(child, 0)


main()
