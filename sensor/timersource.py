"""Base of the sources driven by a timer (psutil samplers): no fd, no kernel loss, nothing to detach."""


class TimerSource:
    module = "psutil"
    capabilities: frozenset[str] = frozenset()  # see sensor.source

    def fileno(self):
        return None  # polled by the pipeline every poll_interval

    def stats(self) -> dict:
        return {"lost_kernel": 0, "lost_user": 0, "queue_bytes": 0}

    def detach(self):
        pass

    def close(self):
        pass
