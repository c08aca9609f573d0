"""Calls that leave the CPU, for the trace tests: each of T threads sleeps N times for 2 ms and
reads a pipe that another thread fills 5 ms later, so calls begin on one CPU and may end on
another. Prints the pid."""
import os
import sys
import threading
import time


def worker(n: int):
    for _ in range(n):
        time.sleep(0.002)
        os.getppid()
    r, w = os.pipe()
    threading.Timer(0.005, os.write, (w, b"12345")).start()
    os.read(r, 100)


def main():
    threads, n = int(sys.argv[1]), int(sys.argv[2])
    ts = [threading.Thread(target=worker, args=(n,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(os.getpid(), flush=True)


main()
