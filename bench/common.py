"""Helpers shared by the benchmarks: each owns one marked section of docs/performance.md."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
HEAD = """# Performance

Measured by `make bench` (bench/*.py). The machines are shared and noisy: compare the ratios
measured within one run, not absolute times. Raw figures: bench/results/ (not committed).
"""


def update_section(name: str, body: str, doc: Path = DOC, add: bool = True):
    """Replaces this benchmark's section (between its markers) of `doc`, keeping the others;
    a section not there yet is appended, unless `add` is false (a page that places it itself)."""
    text = doc.read_text() if doc.exists() else HEAD
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    elif add:
        text = text.rstrip() + "\n\n" + block + "\n"
    else:
        return
    doc.write_text(text)
