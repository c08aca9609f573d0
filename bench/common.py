"""Helpers shared by the benchmarks: each owns one marked section of docs/performance.md."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
HEAD = """# Performance

Measured by `make bench` (bench/*.py). The machines are shared and noisy: compare the ratios
measured within one run, not absolute times. Raw figures: bench/results/ (not committed).
"""


def update_section(name: str, body: str):
    """Replaces this benchmark's section (between its markers), keeping the others."""
    text = DOC.read_text() if DOC.exists() else HEAD
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(text)
