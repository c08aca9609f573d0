"""etw/*.yaml, the Windows counterpart of bpf/: every event the mappers handle is defined, and every
field a definition maps exists in that event's field list."""
from __future__ import annotations

import re

from sensor.windows.providers import RECORD_FIELDS, load


def test_every_mapped_field_exists_in_its_event():
    providers = load()
    assert len(providers) >= 9
    for p in providers.values():
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", p.guid), p.file
        assert set(p.enable) <= set(p.keywords), p.file
        assert (p.session if p.source == "etw" else p.channel), p.file
        for e in p.events.values():
            assert e.record in RECORD_FIELDS, (p.file, e.id, e.record)
            assert set(e.map) <= RECORD_FIELDS[e.record], (p.file, e.id, set(e.map) - RECORD_FIELDS[e.record])
            missing = set(e.map.values()) - set(e.fields)
            assert not missing, (p.file, e.id, missing)
            assert len(set(e.fields)) == len(e.fields), (p.file, e.id)


def test_keyword_masks_are_the_documented_bits():
    p = load()
    assert p["Microsoft-Windows-Kernel-Process"].any_keywords == 0x10
    assert p["Microsoft-Windows-Kernel-File"].any_keywords == 0x1000 | 0x400 | 0x800
    assert p["Microsoft-Windows-Kernel-Registry"].any_keywords == 0x1000 | 0x4000 | 0x100 | 0x200
    assert p["Microsoft-Windows-Kernel-Network"].any_keywords == 0x30
    assert p["Windows Kernel Trace"].session == "NT Kernel Logger"


def test_every_record_kind_has_one_mapper():
    from sensor.windows.mappers import MAPPERS

    used = {e.record for p in load().values() for e in p.events.values()}
    assert used == set(RECORD_FIELDS) == set(MAPPERS)
