"""Literal index of Sigma rules: which rules an event can match, from one Aho-Corasick pass per field.

A rule's condition is reduced to *clauses*: sets of triggers (schema path, literal, anchor) such
that the rule cannot match an event unless every clause has a trigger that fires; a rule with no
clause is always evaluated. For a condition node N, needs(N) is at most two clauses, or None when
N can hold with no literal present:

- a string value (contains, startswith, endswith, equals, wildcards): one clause, its longest ASCII
  run between wildcards, anchored where the glob puts it (Sigma's glob match is a full match);
- a regular expression: one clause, the strings one of which every match contains (top-level
  literal runs, small alternations and classes of literals; repeats of at least one count);
  an expansion (windash, base64offset): one clause, the union of its values' triggers;
- AND: the best two clauses of its children (every child holds, so every clause of each);
- OR: clause j is the union over its children of each child's clause j (or its only one): the
  child that holds has all its clauses fire; None if any child is None;
- NOT (but NOT NOT x = x), null, empty strings, exists, numbers, booleans, CIDR, `Initiated`
  (compared after a mapping): None.

A trigger fires when its literal occurs, at its anchor, in the lowercased text of its field. The
literal is ASCII, so a case-insensitive (or |cased) match of it on ASCII text implies the lowercase
occurrence. A value that is not an ASCII str, int, float or bool (non-ASCII text, a list, a
mapping) fires every trigger of its field, so evaluation decides.
"""
from __future__ import annotations

import re
from functools import lru_cache
from operator import itemgetter
from typing import NamedTuple

from ahocorasick_rs import AhoCorasick, Implementation
from sigma import conditions as sc
from sigma import types as st

from .schema import get

try:
    from re import _parser as sre  # Python 3.11+
except ImportError:  # pragma: no cover
    import sre_parse as sre

ANY, START, END, EXACT = 0, 1, 2, 3
NONASCII = 4  # an anchor of its own: the value cannot be ASCII text (fires only where all triggers do)
# the only non-ASCII characters that re.IGNORECASE or str.lower() match to an ASCII one
# (tests/test_rules_index.py checks this against every code point)
ASCII_FOLDS = frozenset("\u0130\u0131\u017f\u212a")
CLAUSES = 2     # per rule: a third would rarely prune more than it costs
_ALTS = 32      # most strings a regex clause or alternation may hold


class Trigger(NamedTuple):
    path: str
    literal: str  # ASCII, lowercase
    anchor: int   # ANY, START (a prefix), END (a suffix), EXACT (the whole value)


def needs(node, fields: dict, keyword_fields: tuple) -> tuple | None:
    """Clauses (frozensets of triggers) every one of which fires on every event `node` matches,
    best first, or None (see the module doc)."""
    if isinstance(node, sc.ConditionAND):
        found = [c for a in node.args if (n := needs(a, fields, keyword_fields)) is not None for c in n]
        return tuple(sorted(set(found), key=_selectivity, reverse=True)[:CLAUSES]) if found else None
    if isinstance(node, sc.ConditionOR):
        kids = [needs(a, fields, keyword_fields) for a in node.args]
        if any(k is None for k in kids):
            return None
        width = max((len(k) for k in kids), default=1)
        out = {frozenset().union(*(k[min(j, len(k) - 1)] for k in kids)) for j in range(width)}
        return tuple(sorted(out, key=_selectivity, reverse=True))
    if isinstance(node, sc.ConditionNOT):
        inner = node.args[0]
        return needs(inner.args[0], fields, keyword_fields) if isinstance(inner, sc.ConditionNOT) else None
    if isinstance(node, sc.ConditionFieldEqualsValueExpression):
        path = fields.get(node.field)
        if path is None or node.field == "Initiated":
            return None
        runs = _runs(node.value, anywhere=False)
        return None if runs is None else (frozenset(Trigger(path, lit, anchor) for lit, anchor in runs),)
    if isinstance(node, sc.ConditionValueExpression):  # keywords: found anywhere in the text fields
        runs = _runs(node.value, anywhere=True)
        return None if runs is None else (frozenset(Trigger(p, lit, ANY) for lit, _ in runs for p in keyword_fields),)
    return None


def _score(literal: str, anchor: int) -> int:
    """Longer literals are rarer, anchored ones rarer still, non-ASCII text rarest."""
    return 99 if anchor == NONASCII else len(literal) + 2 * bool(anchor)


def _selectivity(clause: frozenset) -> tuple:
    return (min(_score(t.literal, t.anchor) for t in clause), -len(clause)) if clause else (999, 0)


def _runs(v, anywhere: bool) -> list[tuple[str, int]] | None:
    """(literal, anchor) pairs one of which every match of value `v` contains, or None."""
    if isinstance(v, st.SigmaExpansion):
        out = []
        for x in v.values:
            r = _runs(x, anywhere)
            if r is None:
                return None
            out += r
        return out
    if type(v) in (st.SigmaString, st.SigmaCasedString):
        run = _string_run(v.s, anywhere)
        return None if run is None else [run]
    if isinstance(v, st.SigmaRegularExpression):
        try:
            alts = _required(sre.parse(str(v.regexp)))
        except (sre.error, RecursionError):
            return None
        return None if alts is None else [(a, ANY) for a in alts]
    return None


def _string_run(parts, anywhere: bool) -> tuple[str, int] | None:
    """The best ASCII literal run of a glob, with where the full match puts it."""
    runs, cur, at_start = [], "", True
    for p in parts:
        if isinstance(p, str):
            cur += p
            continue
        if not isinstance(p, st.SpecialChars):  # a placeholder: not evaluated either
            return None
        if cur:
            runs.append((cur, START if at_start else ANY))
        cur, at_start = "", False
    if cur:
        runs.append((cur, EXACT if at_start else END))
    out = []
    for lit, anchor in runs:
        anchor = ANY if anywhere else anchor
        if lit.isascii():
            out.append((lit.lower(), anchor))
        elif any(not c.isascii() and c not in ASCII_FOLDS for c in lit):
            out.append(("", NONASCII))  # it matches no ASCII character, so no ASCII text
        else:  # its ASCII parts, anchored where they stand
            parts = re.split(r"[^\x00-\x7f]+", lit)
            for k, part in enumerate(parts):
                if part:
                    at_start = k == 0 and anchor in (START, EXACT)
                    at_end = k == len(parts) - 1 and anchor in (END, EXACT)
                    out.append((part.lower(), START if at_start else END if at_end else ANY))
    return max(out, key=lambda r: _score(*r)) if out else None


def _language(items) -> set[str] | None:
    """Every string a regex sequence of literals, literal classes and groups of them matches."""
    out = {""}
    for op, arg in items:
        if op is sre.LITERAL:
            alts = {chr(arg)}
        elif op is sre.IN and all(o is sre.LITERAL for o, _ in arg):
            alts = {chr(a) for _, a in arg}
        elif op is sre.SUBPATTERN:
            alts = _language(arg[-1])
        elif op is sre.BRANCH:
            langs = [_language(alt) for alt in arg[1]]
            alts = None if any(x is None for x in langs) else set().union(*langs)
        else:
            return None
        if alts is None or len(out) * len(alts) > _ALTS:
            return None
        out = {a + b for a in out for b in alts}
    return out


def _required(items) -> set[str] | None:
    """The best set of strings one of which every match of a regex sequence contains."""
    found, run = [], {""}
    for op, arg in items:
        alts = _language([(op, arg)])
        if alts is not None:
            if len(run) * len(alts) <= _ALTS:
                run = {a + b for a in run for b in alts}
                continue
            found.append(run)
            run = alts
            continue
        found.append(run)
        run = {""}
        inner = None
        if op is sre.SUBPATTERN:
            inner = _required(arg[-1])
        elif op is sre.BRANCH:
            sets = [_required(alt) for alt in arg[1]]
            inner = None if any(x is None for x in sets) else set().union(*sets)
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT) and arg[0] >= 1:
            inner = _required(arg[2])
        if inner:
            found.append(inner)
    found.append(run)
    valid = [{x.lower() for x in s} for s in found if s and all(x and x.isascii() for x in s)]
    return max(valid, key=lambda s: (min(map(len, s)), -len(s))) if valid else None


class Fields(dict):
    """An event's fields by schema path, each read on first use (the rules' matchers index it)."""

    __slots__ = ("event",)

    def __missing__(self, path: str):
        v = self[path] = get(self.event, path)
        return v


# Anchors become part of the text: a field's text is BEGIN + lowercase value + FINISH, and an anchored
# literal carries them, so the automaton alone decides where a literal stands. A value holding
# these characters can only add occurrences, never hide one.
BEGIN, FINISH = "\x02", "\x03"
SCANS_KEPT = 4096  # per field: values seen again (executables, recurring command lines) are not rescanned
_first = itemgetter(0)


def _word(t: Trigger) -> str | None:
    if t.anchor == NONASCII:
        return None  # nothing to find: only `every` holds it
    return (BEGIN if t.anchor in (START, EXACT) else "") + t.literal + (FINISH if t.anchor in (END, EXACT) else "")


class _FieldScan:
    """One field's literals in one automaton: the rules whose first and second clauses a value fires."""

    def __init__(self, words: dict[str | None, tuple[set, set]]):
        self.every = tuple(frozenset().union(*(w[j] for w in words.values())) for j in range(CLAUSES))
        self.words = [w for w in words if w is not None]
        self.keys = [tuple(frozenset(words[w][j]) for w in self.words) for j in range(CLAUSES)]
        self.auto = AhoCorasick(self.words, implementation=Implementation.DFA) if self.words else None
        self.none = (frozenset(),) * CLAUSES
        self.text = lru_cache(maxsize=SCANS_KEPT)(self._text)

    def _text(self, v: str) -> tuple:
        if not v.isascii():
            return self.every
        if self.auto is None:
            return self.none
        found = {i for i, _, _ in self.auto.find_matches_as_indexes(BEGIN + v.lower() + FINISH, overlapping=True)}
        if len(found) < 2:  # most values hold no literal, or one: no union to build
            return tuple(keys[i] for keys in self.keys for i in found) if found else self.none
        return tuple(frozenset().union(*map(keys.__getitem__, found)) for keys in self.keys)

    def value(self, v) -> tuple:
        """For a value that is not a str: numbers and booleans as text, anything else fires all."""
        return self._text(str(v)) if type(v) in (int, float, bool) else self.every


def _memoized(rule):
    """A rule that runs on every event, remembering its verdict on the values it reads (rules are
    pure; an executable recurs): the key holds each value's type, so 1, 1.0 and True differ."""
    paths, match = tuple(sorted(rule.paths)), rule.match

    @lru_cache(maxsize=SCANS_KEPT)
    def known(key):
        return match(dict(zip(paths, key[0])))

    def memo(flat):
        values = tuple(flat[p] for p in paths)
        try:
            return known((values, tuple(map(type, values))))
        except TypeError:  # an unhashable value (a list): evaluated as it is
            return match(flat)
    return memo


class Index:
    """One logsource category's rules, with an automaton per field over their triggers, which
    stand for rule numbers: per clause (first, second), the rules it belongs to."""

    def __init__(self, rules: list):
        self.rules = rules
        self.always = [i for i, r in enumerate(rules) if r.needs is None]
        self.matchers = [_memoized(r) if r.needs is None else r.match for r in rules]
        self.single = frozenset(i for i, r in enumerate(rules) if r.needs is not None and len(r.needs) == 1)
        per_path: dict[str, dict] = {}
        for i, r in enumerate(rules):
            for j, clause in enumerate(r.needs or ()):
                for t in clause:
                    per_path.setdefault(t.path, {}).setdefault(_word(t), (set(), set()))[j].add(i)
        groups: dict[str, list] = {}  # fields grouped by their parent object, read once per event
        for path, words in sorted(per_path.items()):
            parent, _, leaf = path.rpartition(".")
            groups.setdefault(parent, []).append((path, leaf, _FieldScan(words)))
        self.groups = [(tuple(parent.split(".")) if parent else (), leaves) for parent, leaves in groups.items()]

    def candidates(self, event: dict, flat: Fields) -> list[int]:
        """Numbers, in rule order, of the rules that can match `event`: those with one clause
        that fired, or two that both did; the fields read are left in `flat` (as schema.get reads)."""
        first, second = set(), set()
        for parts, leaves in self.groups:
            d = event
            for p in parts:
                d = d.get(p) if isinstance(d, dict) else None
            for path, leaf, scan in leaves:
                if path in event:  # a flattened event's dotted key wins, as in schema.get
                    v = event[path]
                else:
                    v = d.get(leaf) if isinstance(d, dict) else None
                flat[path] = v
                if v is not None:
                    hit = scan.text(v) if type(v) is str else scan.value(v)
                    if hit is not scan.none:  # most values hold no literal
                        first |= hit[0]
                        second |= hit[1]
        if not first:
            return self.always
        first = (first & self.single) | (first & second)
        found = sorted(first.union(self.always)) if self.always else sorted(first)
        return found

    def stats(self) -> dict:
        return {"rules": len(self.rules), "always_evaluated": len(self.always),
                "literals": sum(len(scan.words) for _, leaves in self.groups for _, _, scan in leaves)}
