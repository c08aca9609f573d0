"""Sigma rules: parsed with pySigma, fields mapped to the schema, compiled once to matchers."""
from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from sigma import conditions as sc
from sigma import types as st
from sigma.collection import SigmaCollection
from sigma.exceptions import SigmaError
from sigma.processing.conditions import LogsourceCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations import FieldMappingTransformation
from sigma.rule import SigmaRule

from .errors import ConfigError
from .ruleindex import Fields, Index, needs
from .schema import get

log = logging.getLogger("sensor.rules")

BUILTIN = Path(__file__).resolve().parent / "data" / "rules"

# Sigma field -> schema field, per logsource category (what each event kind can honestly fill).
_PROCESS = {"Image": "process.executable", "OriginalFileName": "process.name",
            "CommandLine": "process.command_line", "CurrentDirectory": "process.working_directory",
            "ParentImage": "process.parent.executable", "ParentCommandLine": "process.parent.command_line",
            "User": "user.name", "LogonId": "user.audit.id", "ProcessId": "process.pid",
            "ParentProcessId": "process.parent.pid",
            # this sensor's own: the image was created or written while the sensor ran
            "ImageWritten": "process.executable_written"}
_ACTOR = {"Image": "process.executable", "CommandLine": "process.command_line", "User": "user.name",
          "ProcessId": "process.pid"}
FIELDS = {
    "process_creation": _PROCESS,
    "file_event": {**_ACTOR, "TargetFilename": "file.path"},
    "file_delete": {**_ACTOR, "TargetFilename": "file.path"},
    "file_rename": {**_ACTOR, "TargetFilename": "file.path", "SourceFilename": "file.original.path"},
    "network_connection": {**_ACTOR, "DestinationIp": "destination.ip", "DestinationPort": "destination.port",
                           "SourceIp": "source.ip", "SourcePort": "source.port",
                           "DestinationHostname": "destination.domain", "Protocol": "network.transport",
                           "Initiated": "network.direction"},
    "dns_query": {**_ACTOR, "QueryName": "dns.question.name"},
    # kernel module loads (finit_module/init_module), in Sysmon's driver_load terms
    "driver_load": {**_ACTOR, "ImageLoaded": "file.path"},
    # ptrace of another process, in Sysmon's process_access terms (GrantedAccess: the request)
    "process_access": {"SourceImage": "process.executable", "SourceProcessId": "process.pid",
                       "SourceUser": "user.name", "TargetImage": "target.process.executable",
                       "TargetProcessId": "target.process.pid", "GrantedAccess": "security.ptrace_request"},
}
# Sysmon's Initiated=true/false is read from network.direction by the evaluator (see _field), so
# the pipeline leaves that name as it is
_BY_NAME = {"Initiated"}


def pipeline() -> ProcessingPipeline:
    """Sigma's field names to the schema's, per logsource category (FIELDS), in pySigma's
    processing-pipeline form, as sensor.windows.sigma maps Sysmon's and the Security log's."""
    return ProcessingPipeline(
        name="sensor: Sigma fields to the sensor's schema", priority=20,
        items=[ProcessingItem(FieldMappingTransformation({k: v for k, v in mapping.items() if k not in _BY_NAME}),
                              rule_conditions=[LogsourceCondition(category=cat)], identifier=f"sensor_{cat}")
               for cat, mapping in FIELDS.items()])


_PIPELINE = pipeline()
_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the same documents, parsed in C where libyaml is built in
SEVERITY = {"informational": 1, "low": 21, "medium": 47, "high": 73, "critical": 99}


def category_of(event: dict) -> str | None:
    """The Sigma logsource category an event belongs to, if any."""
    ev = event.get("event", {})
    cats, action, dataset = ev.get("category") or [], ev.get("action"), ev.get("dataset")
    if "process" in cats and action == "exec":
        return "process_creation"
    if dataset == "process" and "file" not in cats and "network" not in cats:
        return None  # fork, exit, thread start: two of every exec's three events, answered first
    types = ev.get("type") or []
    if "file" in cats:
        if "deletion" in types:
            return "file_delete"
        if action == "rename":
            return "file_rename"
        if "creation" in types or "change" in types:
            return "file_event"
    if dataset == "network.dns":
        return "dns_query" if get(event, "dns.type") == "query" else None  # one alert per lookup
    if "network" in cats and action in ("connect", "accept", "udp-send", "udp-receive"):
        return "network_connection"
    if dataset == "security":
        if action in ("init_module", "finit_module"):
            return "driver_load"
        if action == "ptrace":
            return "process_access"
    return None


class _Recorder(dict):
    """The field map, remembering which schema paths a rule's matchers read."""

    def __init__(self, fields: dict, used: set):
        super().__init__(fields)
        self.used = used

    def get(self, key, default=None):
        path = super().get(key, default)
        if path is not None:
            self.used.add(path)
        return path


class Unsupported(Exception):
    """A rule uses something the evaluator cannot honour; the message says what."""


class UnknownField(Unsupported):
    """A field no event of the rule's category fills: a mistake in a user's rule, not a missing feature."""


class RuleError(ConfigError):
    """A rule file given to `sensor run` is malformed, invalid Sigma, or names an unknown field."""


@dataclass
class Rule:
    id: str
    title: str
    description: str
    author: str
    level: str
    category: str
    tags: list[str]
    references: list[str]
    path: str
    match: Callable[[dict], bool] = field(repr=False)
    paths: set[str] = field(default_factory=set)  # schema fields it reads
    needs: frozenset | None = field(default=None, repr=False)  # triggers, one of which a match fires


@dataclass
class Report:
    path: str
    id: str | None
    title: str | None
    status: str  # ok, unsupported, error
    reason: str = ""
    invalid: bool = False  # the rule is wrong (not just beyond this sensor): `sensor run` refuses it


class _Lazy:
    """A glob's regex, compiled on first use: the index spares most rules any evaluation, and
    compiling every SigmaHQ Windows rule's took a third of loading them. Built from re.escape'd
    parts, so it cannot fail later."""

    def __init__(self, pattern: str, flags: int):
        self._args = (pattern, flags)

    def __getattr__(self, name):  # the first use only: then the compiled methods are attributes
        rx = re.compile(*self._args)
        self.fullmatch, self.search = rx.fullmatch, rx.search
        return getattr(rx, name)


def _string(v: st.SigmaString, anywhere: bool = False) -> Callable[[object], bool]:
    """Glob match of the whole value; `anywhere` (keywords: a free-text search) finds it inside."""
    cased = type(v).__name__ == "SigmaCasedString"
    parts = []
    for p in v.s:
        if p == st.SpecialChars.WILDCARD_MULTI:
            parts.append(".*")
        elif p == st.SpecialChars.WILDCARD_SINGLE:
            parts.append(".")
        elif isinstance(p, str):
            parts.append(re.escape(p))
        else:
            raise Unsupported(f"placeholder {p!r} in a value")
    if not v.contains_special():  # no wildcards: no regex needed
        want = "".join(p for p in v.s if isinstance(p, str))
        want = want if cased else want.lower()
        if anywhere:
            return lambda x: want in (str(x) if cased else str(x).lower())
        return lambda x: (str(x) if cased else str(x).lower()) == want
    rx = _Lazy("".join(parts), re.DOTALL | (0 if cased else re.IGNORECASE))
    if anywhere:
        return lambda x: rx.search(str(x)) is not None
    return lambda x: rx.fullmatch(str(x)) is not None


def _value(v) -> Callable[[object], bool]:
    """A matcher for one field value: Sigma semantics, case-insensitive unless |cased."""
    if isinstance(v, st.SigmaString):
        return _string(v)
    if isinstance(v, st.SigmaBool):
        return lambda x: str(x).lower() == str(v.boolean).lower()
    if isinstance(v, st.SigmaNumber):
        return lambda x: _num(x) == v.number
    if isinstance(v, st.SigmaRegularExpression):
        flags = 0
        for f in v.flags:  # pySigma's compile() only validates: build the pattern with its flags
            flags |= v.sigma_to_python_flags[f]
        rx = re.compile(str(v.regexp), flags)
        return lambda x: rx.search(str(x)) is not None
    if isinstance(v, st.SigmaCIDRExpression):
        net = ipaddress.ip_network(v.cidr, strict=False)
        return lambda x: _in_net(x, net)
    if isinstance(v, st.SigmaCompareExpression):
        ops = st.SigmaCompareExpression.CompareOperators
        cmp = {ops.LT: lambda a, b: a < b, ops.LTE: lambda a, b: a <= b,
               ops.GT: lambda a, b: a > b, ops.GTE: lambda a, b: a >= b}[v.op]
        return lambda x: (n := _num(x)) is not None and cmp(n, v.number.number)
    if isinstance(v, st.SigmaExpansion):
        ms = [_value(x) for x in v.values]
        return lambda x: any(m(x) for m in ms)
    raise Unsupported(f"value type {type(v).__name__}")


def _num(x):
    try:
        return int(x)
    except (TypeError, ValueError):
        try:
            return float(x)
        except (TypeError, ValueError):
            return None


def _in_net(x, net) -> bool:
    try:
        return ipaddress.ip_address(str(x)) in net
    except ValueError:
        return False


def _field(name: str, fields: dict) -> Callable[[dict], object]:
    """A getter on the flat view of an event (see RuleSet.match)."""
    path = fields.get(name)
    if path is None:
        raise UnknownField(f"field {name!r} has no source in this sensor's events")
    if name == "Initiated":  # Sysmon's Initiated=true is an outbound connection
        return lambda f: "true" if f[path] == "egress" else "false"
    return lambda f: f[path]


KEYWORD_FIELDS = ("process.command_line", "process.executable", "process.parent.command_line", "file.path")


def _compile(node, fields: dict) -> Callable[[dict], bool]:
    if isinstance(node, sc.ConditionAND):
        fs = [_compile(a, fields) for a in node.args]
        return lambda e: all(f(e) for f in fs)
    if isinstance(node, sc.ConditionOR):
        fs = _merged(node.args, fields)
        return fs[0] if len(fs) == 1 else (lambda e: any(f(e) for f in fs))
    if isinstance(node, sc.ConditionNOT):
        f = _compile(node.args[0], fields)
        return lambda e: not f(e)
    if isinstance(node, sc.ConditionFieldEqualsValueExpression):
        getter = _field(node.field, fields)
        if isinstance(node.value, st.SigmaNull):
            return lambda e: getter(e) is None
        if isinstance(node.value, st.SigmaExists):
            return lambda e, want=node.value.exists: (getter(e) is not None) == want
        m = _value(node.value)

        def match(e):
            x = getter(e)
            if x is None:
                return False
            return any(m(i) for i in x) if isinstance(x, list) else m(x)
        return match
    if isinstance(node, sc.ConditionValueExpression):  # keywords: anywhere in the text fields
        if isinstance(fields, _Recorder):
            fields.used.update(KEYWORD_FIELDS)
        v = node.value
        m = _string(v, anywhere=True) if isinstance(v, st.SigmaString) else _value(v)
        return lambda e: any((x := e[f]) is not None and m(x) for f in KEYWORD_FIELDS)
    raise Unsupported(f"condition element {type(node).__name__}")


def _glob(v: st.SigmaString) -> str:
    return "".join(".*" if p == st.SpecialChars.WILDCARD_MULTI else "." if p == st.SpecialChars.WILDCARD_SINGLE
                   else re.escape(p) for p in v.s)


def _merged(args, fields: dict) -> list[Callable]:
    """ORed children, with the plain case-insensitive string tests of one field folded into a
    single alternation regex: lists of values per field are the bulk of SigmaHQ's rules."""
    groups: dict[str, list] = {}
    out = []
    for a in args:
        v = getattr(a, "value", None)
        if (isinstance(a, sc.ConditionFieldEqualsValueExpression) and type(v) is st.SigmaString
                and not v.contains_placeholder() and all(isinstance(p, str) or isinstance(p, st.SpecialChars) for p in v.s)):
            groups.setdefault(a.field, []).append(v)
        else:
            out.append(_compile(a, fields))
    for name, values in groups.items():
        if len(values) == 1:
            out.append(_compile(sc.ConditionFieldEqualsValueExpression(name, values[0]), fields))
            continue
        getter = _field(name, fields)
        rx = _Lazy("|".join(f"(?:{_glob(v)})" for v in values), re.DOTALL | re.IGNORECASE)

        def match(e, getter=getter, rx=rx):
            x = getter(e)
            if x is None:
                return False
            return any(rx.fullmatch(str(i)) for i in x) if isinstance(x, list) else rx.fullmatch(str(x)) is not None
        out.append(match)
    return out


def compile_rule(rule: SigmaRule, path: str, products=("linux",), fields: dict | None = None,
                 category: str | None = None) -> Rule:
    """`products`: whose rules to take (the mapping is the same schema's, whatever the platform);
    `fields` and `category`: a rule whose fields a processing pipeline mapped already
    (sensor.windows.sigma), and the category its events have here."""
    ls = rule.logsource
    if ls.product is not None and ls.product not in products:
        raise Unsupported(f"logsource product {ls.product!r}: this sensor runs on linux")
    if fields is None and ls.service is not None:
        raise Unsupported(f"logsource service {ls.service!r}: reads log lines, not sensor events")
    if fields is None and ls.category not in FIELDS:
        raise Unsupported(f"logsource category {ls.category!r} is not produced by this sensor")
    if len(rule.detection.parsed_condition) != 1:
        raise Unsupported("more than one condition")
    if fields is None:  # the Sigma names become schema paths; a name left over has no source here
        _PIPELINE.apply(rule)
        mapping = FIELDS[ls.category]
        fields = {path: path for name, path in mapping.items() if name not in _BY_NAME}
        fields.update({name: mapping[name] for name in _BY_NAME & mapping.keys()})
    tree = rule.detection.parsed_condition[0].parse()
    used: set[str] = set()
    fields = dict(fields)
    match = _compile(tree, _Recorder(fields, used))
    authors = rule.author if isinstance(rule.author, str) else ", ".join(rule.author or [])
    return Rule(id=str(rule.id), title=rule.title, description=(rule.description or "").strip(),
                author=authors or "unknown", level=str(rule.level or "medium").lower().split(".")[-1],
                category=category or ls.category, tags=[str(t) for t in rule.tags], references=list(rule.references or []),
                path=path, match=match, paths=used, needs=needs(tree, fields, KEYWORD_FIELDS))


def _files(paths) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(x for x in p.rglob("*") if x.suffix in (".yml", ".yaml"))
        else:
            out.append(p)
    return out


class RuleSet:
    category_of = staticmethod(category_of)  # which rules an event meets: a subclass may say otherwise
    def __init__(self, rules: list[Rule], reports: list[Report]):
        self.rules, self.reports = rules, reports
        self.skipped_invalid = 0
        self.by_category: dict[str, list[Rule]] = {}
        self.paths: dict[str, set[str]] = {}  # per category: every schema field its rules read
        for r in rules:
            self.by_category.setdefault(r.category, []).append(r)
            self.paths.setdefault(r.category, set(KEYWORD_FIELDS)).update(r.paths)
        self.index = {cat: Index(rs) for cat, rs in self.by_category.items()}

    @classmethod
    def load(cls, paths, products=("linux",), compile=compile_rule) -> "RuleSet":
        """Every rule of the files and directories given; a broken file is reported, not fatal.
        `compile`: compile_rule, or a platform's (sensor.windows.sigma) that maps fields first."""
        rules, reports = [], []
        for path in _files(paths):
            try:
                # libyaml, not pySigma's from_yaml (pure-Python PyYAML): 10x faster on SigmaHQ's 2,400 files
                docs = list(yaml.load_all(path.read_text(), Loader=_YAML))
                collection = SigmaCollection.from_dicts(docs, collect_errors=True)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark else ""
                reason = f"invalid YAML{where}: {getattr(exc, 'problem', None) or str(exc).splitlines()[0]}"
                reports.append(Report(str(path), None, None, "error", reason, invalid=True))
                continue
            except (OSError, SigmaError, ValueError) as exc:
                reports.append(Report(str(path), None, None, "error", str(exc).splitlines()[0], invalid=True))
                continue
            for item in collection:
                rid, title = str(getattr(item, "id", "") or "") or None, getattr(item, "title", None)
                errors = getattr(item, "errors", [])
                if errors:
                    reports.append(Report(str(path), rid, title, "error", str(errors[0]), invalid=True))
                    continue
                if not isinstance(item, SigmaRule):
                    reports.append(Report(str(path), rid, title, "unsupported", f"{type(item).__name__} (correlation)"))
                    continue
                try:
                    rules.append(compile(item, str(path), products))
                    reports.append(Report(str(path), rid, title, "ok"))
                except (Unsupported, SigmaError) as exc:  # a SigmaError here: e.g. an undefined selection
                    reports.append(Report(str(path), rid, title, "unsupported", str(exc),
                                          invalid=isinstance(exc, (UnknownField, SigmaError))))
        for r in reports:
            if r.status != "ok":
                log.warning("rule %s (%s): %s: %s", r.title or "?", r.path, r.status, r.reason)
        return cls(rules, reports)

    @classmethod
    def load_for_run(cls, paths, skip_invalid: bool = False) -> "RuleSet":
        """The rules `sensor run` starts with: an invalid rule is an error, like a bad config,
        unless `skip_invalid` (then it is logged and counted). Unsupported features still skip."""
        rules = cls.load(paths)
        bad = [r for r in rules.reports if r.invalid]
        if bad and not skip_invalid:
            r = bad[0]
            more = f" (and {len(bad) - 1} more invalid rules)" if len(bad) > 1 else ""
            raise RuleError(f"{r.path}: rule {r.title or '?'!r}: {r.reason}{more}",
                            hint="fix it, or start without it with --rules-skip-invalid; "
                                 "`sensor rules check PATH` lists every rule")
        for r in bad:
            log.warning("rules: skipped invalid rule %r (%s): %s", r.title or "?", r.path, r.reason)
        rules.skipped_invalid = len(bad)
        return rules

    def stats(self) -> dict:
        """For sensor.health: rules running, and those left out at load."""
        return {"loaded": len(self.rules), "unsupported": sum(r.status == "unsupported" and not r.invalid
                                                             for r in self.reports),
                "skipped_invalid": self.skipped_invalid}

    def match(self, event: dict) -> list[Rule]:
        """The rules that match, in load order: only those whose literals the event holds
        (sensor.ruleindex) are evaluated; exactly the rules match_all finds."""
        index = self.index.get(self.category_of(event))
        if index is None:
            return []
        flat = Fields()  # each field read once, and only if needed
        flat.event = event
        rules, matchers = index.rules, index.matchers
        return _evaluate([(rules[i], matchers[i]) for i in index.candidates(event, flat)], flat)

    def match_all(self, event: dict) -> list[Rule]:
        """The reference: every rule of the event's category evaluated in full."""
        cat = category_of(event)
        if cat is None:
            return []
        return _evaluate([(r, r.match) for r in self.by_category.get(cat, ())],
                         {p: get(event, p) for p in self.paths.get(cat, ())})


def _evaluate(rules, flat) -> list[Rule]:
    """The rules whose matcher holds, of (rule, matcher) pairs."""
    hits = []
    for r, match in rules:
        try:
            if match(flat):
                hits.append(r)
        except Exception as exc:  # a rule must never stop the sensor
            log.warning("rule %s failed on an event: %s", r.id, exc)
    return hits


def alert(rule: Rule, event: dict) -> dict:
    """The alert for a match: the rule (with its author, as the DRL requires), ATT&CK from the
    tags, and the triggering event's process and ids so an alert leads to its process tree."""
    techniques = sorted({t[7:].upper() for t in rule.tags if re.fullmatch(r"attack\.t\d{4}(\.\d{3})?", t)})
    tactics = sorted({t[7:] for t in rule.tags if t.startswith("attack.") and not re.match(r"attack\.[tgs]\d{4}", t)})
    out = {
        "event": {"kind": "alert", "category": event["event"].get("category", []), "type": ["info"],
                  "action": "sigma-match", "dataset": "alert", "module": "sigma",
                  "severity": SEVERITY.get(rule.level, 47), "reason": rule.title},
        "rule": {"id": rule.id, "name": rule.title, "description": rule.description, "author": rule.author,
                 "level": rule.level, "ruleset": "sigma", "license": "DRL-1.1",
                 "reference": rule.references[0] if rule.references else "", "category": rule.category},
        "sensor": {"trigger": {"id": event["event"].get("id"), "sequence": event["event"].get("sequence"),
                               "dataset": event["event"].get("dataset")}},
    }
    if techniques or tactics:
        out["threat"] = {"framework": "MITRE ATT&CK",
                         "technique": [{"id": t.split(".")[0], **({"subtechnique": [{"id": t}]} if "." in t else {})}
                                       for t in techniques],
                         "tactic": [{"name": t} for t in tactics]}
    for key in ("process", "user", "file", "source", "destination", "network", "dns", "target", "security"):
        if key in event:
            out[key] = event[key]
    return out
