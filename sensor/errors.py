"""The exceptions a user can act on: each says what went wrong and what to do next."""


class SensorError(Exception):
    """Base of every error the CLI reports in one line and exits non-zero on."""

    hint = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        msg = super().__str__()
        return f"{msg} ({self.hint})" if self.hint else msg


class ConfigError(SensorError):
    """A config file or flag is invalid; the message names the file, line and reason."""


class LibbpfMissing(SensorError):
    hint = "install libbpf1: apt-get install libbpf1"


class NoBTF(SensorError):
    hint = "the kernel needs CONFIG_DEBUG_INFO_BTF=y (/sys/kernel/btf/vmlinux); most distro kernels since 5.8 have it"


class BpfPermission(SensorError):
    hint = "run as root or with CAP_BPF and CAP_PERFMON; `sensor doctor` says what the kernel allows"


class BpfLoadError(SensorError):
    """The kernel refused a program or map; the message carries the verifier's last words."""


class BpfObjectMissing(SensorError):
    hint = "build the eBPF objects with `make bpf` (or reinstall the package)"


class StoreError(SensorError):
    """The local store cannot be written (permissions, full disk)."""
