"""BPF ring buffer consumer that mmaps the map directly: no per-record callback through ctypes.

Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (we write it), page 1 the
producer position, then the data area mapped twice in a row, so a record that wraps past the
end reads as one contiguous slice. Each record has an 8-byte header: u32 length with the BUSY
and DISCARD bits, u32 page offset; records are 8-byte aligned.
"""
from __future__ import annotations

import mmap
import select
import struct

import numpy as np

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8
_u32 = struct.Struct("<I")
_u64 = struct.Struct("<Q")


class RingBuffer:
    def __init__(self, map_fd: int, size: int):
        if size & (size - 1):
            raise ValueError("ring buffer size must be a power of two")
        page = mmap.PAGESIZE
        self.size = size
        self._mask = size - 1
        self._page = page
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._ep = select.epoll()
        self._ep.register(map_fd, select.EPOLLIN)

    def fileno(self) -> int:
        return self._ep.fileno()

    def wait(self, timeout: float) -> None:
        """Sleeps until the kernel wakes us (fill threshold reached) or timeout seconds pass."""
        self._ep.poll(timeout)

    def pending(self) -> int:
        """Bytes written by the kernel and not consumed yet: the queue depth."""
        return _u64.unpack_from(self._data, 0)[0] - _u64.unpack_from(self._cons, 0)[0]

    def read(self, max_records: int = 1 << 16) -> list[bytes]:
        """Copies out up to max_records committed records and releases their space."""
        cons = _u64.unpack_from(self._cons, 0)[0]
        # The kernel publishes with release stores; plain loads act as acquire loads on x86
        # (TSO). Weakly ordered CPUs (arm64) would need a barrier Python cannot issue.
        prod = _u64.unpack_from(self._data, 0)[0]
        out = []
        data, base, mask = self._data, self._page, self._mask
        while cons < prod and len(out) < max_records:
            off = base + (cons & mask)
            hdr = _u32.unpack_from(data, off)[0]
            if hdr & BUSY_BIT:
                break
            length = hdr & ~(BUSY_BIT | DISCARD_BIT)
            if not hdr & DISCARD_BIT:
                out.append(data[off + HDR_SIZE:off + HDR_SIZE + length])
            cons += (length + HDR_SIZE + 7) & ~7
        _u64.pack_into(self._cons, 0, cons)
        return out

    def read_batches(self, dtype: np.dtype, max_batches: int = 1 << 14) -> np.ndarray:
        """Copies out committed records that each hold one or more `dtype` records back to back
        (the syscall tracer's per-CPU batches) as one numpy array: Python works per batch, not
        per record."""
        chunks = self.read(max_batches)
        for c in chunks:
            if len(c) % dtype.itemsize:
                raise ValueError(f"ring buffer holds a record of {len(c)} bytes, not a multiple of {dtype.itemsize}")
        return np.frombuffer(b"".join(chunks), dtype) if chunks else np.empty(0, dtype)

    def close(self):
        for m in (self._cons, self._data):
            if not m.closed:
                m.close()
        self._ep.close()
