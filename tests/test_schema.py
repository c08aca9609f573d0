"""Schema helpers: reversible escaping, timestamps, exit statuses."""
import os
import subprocess

import orjson
import pytest

from sensor.schema import exit_fields, parse_time, rfc3339, text, unescape


@pytest.mark.parametrize("raw", [
    b"plain", b"", b"tab\tnew\nline", "ünïcødé".encode(), b"\xff", b"\\xff", b"a\\b\xc3",
    b"\\\\\x80\\x80", bytes(range(256)), b"\xed\xa0\x80",  # an encoded surrogate is invalid UTF-8
])
def test_text_roundtrips_any_bytes_through_json(raw):
    s, escaped = text(raw)
    back = orjson.loads(orjson.dumps(s))  # strict UTF-8 JSON
    assert (unescape(back) if escaped else back.encode()) == raw
    try:
        raw.decode("utf-8")
        assert not escaped and s == raw.decode()
    except UnicodeDecodeError:
        assert escaped


def test_rfc3339_roundtrip_keeps_nanoseconds():
    ns = 1_764_026_281_123_456_789
    assert rfc3339(ns) == "2025-11-24T23:18:01.123456789Z"
    assert parse_time(rfc3339(ns)) == ns
    assert parse_time("2025-11-24T23:18:01.5Z") == 1_764_026_281_500_000_000
    assert parse_time("2025-11-24T23:18:01+00:00") == 1_764_026_281_000_000_000


def test_exit_fields_match_the_shell():
    # compare with what the OS reports for real children
    for script, expect in (("exit 0", 0), ("exit 42", 42), ("kill -TERM $$", 143)):
        p = subprocess.Popen(["/bin/sh", "-c", script])
        _, status = os.waitpid(p.pid, 0)
        p.returncode = 0
        assert exit_fields(status)["exit_code"] == expect
    assert exit_fields(9 | 0x80) == {"exit_code": 137, "exit_signal": 9, "core_dumped": True}
