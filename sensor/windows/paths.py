"""NT paths as users and rules write them: `\\Device\\HarddiskVolumeN\\...` to a drive letter
(through a table of the host's DOS devices, injectable for tests) and `\\REGISTRY\\MACHINE\\...`
to `HKLM\\...`, as Sysmon writes TargetObject."""
from __future__ import annotations

import re

# \REGISTRY\... roots as Sysmon and the registry editor name them; USER\<SID>_Classes is that
# user's classes root
_HIVES = (("\\REGISTRY\\MACHINE", "HKLM"), ("\\REGISTRY\\USER", "HKU"), ("\\REGISTRY\\A", "HKA"))
_DEVICE = re.compile(r"^\\Device\\[^\\]+", re.I)


class Drives:
    """NT device names to drive letters, e.g. {"\\Device\\HarddiskVolume3": "C:"}."""

    def __init__(self, devices: dict[str, str] | None = None, system_root: str = "C:\\Windows"):
        self.devices = {k.lower(): v for k, v in (devices or {}).items()}
        self.system_root = system_root

    @classmethod
    def of_this_host(cls) -> "Drives":
        """The table QueryDosDevice gives for every drive letter (Windows only)."""
        import ctypes
        import os
        import string

        buf = ctypes.create_unicode_buffer(1024)
        devices = {}
        for letter in string.ascii_uppercase:
            if ctypes.windll.kernel32.QueryDosDeviceW(f"{letter}:", buf, len(buf)):
                devices[buf.value] = f"{letter}:"
        return cls(devices, os.environ.get("SystemRoot", "C:\\Windows"))

    def path(self, nt: str | None) -> str | None:
        """A drive-letter path; what it cannot translate stays as it was."""
        if not nt:
            return nt
        if nt.startswith("\\??\\"):  # the object manager's DOS devices: \??\C:\x
            return nt[4:]
        if nt[:12].lower() == "\\systemroot\\":
            return self.system_root + nt[11:]
        m = _DEVICE.match(nt)
        if m:
            # \Device\HarddiskVolume3 is a prefix of \Device\HarddiskVolume30: match the whole name
            drive = self.devices.get(m.group(0).lower())
            if drive:
                return drive + nt[m.end():]
        return nt


def registry_path(key: str | None) -> str | None:
    """`\\REGISTRY\\MACHINE\\SOFTWARE\\x` as `HKLM\\SOFTWARE\\x` (and USER as HKU); others unchanged."""
    if not key:
        return key
    upper = key.upper()
    for root, hive in _HIVES:
        if upper.startswith(root) and (len(key) == len(root) or key[len(root)] == "\\"):
            return hive + key[len(root):]
    return key
