"""SigmaHQ's Windows rules on this sensor's events: a pySigma processing pipeline maps Sysmon and
Security field names to the schema (the names pysigma-pipeline-sysmon and -windows use; our own
mapping), and WindowsRuleSet evaluates them next to the Linux rules through the same engine."""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

from sigma.processing.conditions import ExcludeFieldCondition, IncludeFieldCondition, LogsourceCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations import (AddConditionTransformation, AddFieldnamePrefixTransformation,
                                              FieldMappingTransformation, HashesFieldsDetectionItemTransformation)
from sigma import conditions as sc
from sigma import types as st
from sigma.rule import SigmaDetection, SigmaRule

from ..rules import RuleSet, Unsupported, category_of, compile_rule
from .activity import CATEGORIES as ACTIVITY
from .providers import load

# User: the whole `DOMAIN\name`, as SigmaHQ matches it (`contains: AUTHORI`); user.name is the name alone
_ACTOR = {"Image": "process.executable", "CommandLine": "process.command_line", "User": "user.qualified_name",
          "ProcessId": "process.pid", "ParentImage": "process.parent.executable",
          "ParentCommandLine": "process.parent.command_line"}
# one process acting on another (Sysmon 8, 10): Source* is the actor, Target* the target
_ACCESS = {"SourceImage": "process.executable", "SourceProcessId": "process.pid", "SourceUser": "user.qualified_name",
           "SourceCommandLine": "process.command_line", "SourceParentImage": "process.parent.executable",
           "TargetImage": "target.process.executable", "TargetProcessId": "target.process.pid",
           "TargetUser": "target.user.qualified_name", "TargetParentProcessId": "target.process.parent.pid"}


def _image(prefix: str) -> dict:
    """A loaded image's fields (Sysmon 6, 7) under dll.* or file.*."""
    return {"ImageLoaded": f"{prefix}.path", "Signed": f"{prefix}.code_signature.exists",
            "Signature": f"{prefix}.code_signature.subject_name", "SignatureStatus": f"{prefix}.code_signature.status",
            "OriginalFileName": f"{prefix}.pe.original_file_name", "Description": f"{prefix}.pe.description",
            "Product": f"{prefix}.pe.product", "Company": f"{prefix}.pe.company",
            "FileVersion": f"{prefix}.pe.file_version", **_hashes(prefix)}


def _hashes(prefix: str) -> dict:
    """The fields pySigma's Hashes transformation makes (`Hashes|contains: 'MD5=..'` -> HashMD5: ..)."""
    return {**{f"Hash{a}": f"{prefix}.hash.{a.lower()}" for a in ("MD5", "SHA1", "SHA256")},
            "HashIMPHASH": f"{prefix}.pe.imphash"}

_NET = {"DestinationIp": "destination.ip", "DestinationPort": "destination.port", "SourceIp": "source.ip",
        "SourcePort": "source.port", "DestinationHostname": "destination.domain", "Protocol": "network.transport"}
_REGISTRY = {**_ACTOR, "TargetObject": "registry.path", "Details": "registry.data.strings"}
# Sigma category -> (Sigma field -> schema path, the record kinds in etw/ whose raw fields it may read)
CATEGORIES = {
    "process_creation": ({**_ACTOR, "CurrentDirectory": "process.working_directory",
                          "OriginalFileName": "process.pe.original_file_name", "Description": "process.pe.description",
                          "Product": "process.pe.product", "Company": "process.pe.company",
                          "ParentProcessId": "process.parent.pid", **_hashes("process")}, "process_start"),
    "file_event": ({**_ACTOR, "TargetFilename": "file.path"}, "file"),
    "file_delete": ({**_ACTOR, "TargetFilename": "file.path"}, "file"),
    "file_rename": ({**_ACTOR, "TargetFilename": "file.path", "SourceFilename": "file.original.path"}, "file"),
    "network_connection": ({**_ACTOR, **_NET}, "network"),
    "dns_query": ({**_ACTOR, "QueryName": "dns.question.name"}, "dns"),
    "registry_event": (_REGISTRY, "registry"), "registry_add": (_REGISTRY, "registry"),
    "registry_delete": (_REGISTRY, "registry"), "registry_set": (_REGISTRY, "registry"),
    "image_load": ({**_ACTOR, **_image("dll")}, "image_load"),
    "driver_load": (_image("file"), "driver_load"),
    "process_access": ({**_ACCESS, "GrantedAccess": "security.granted_access", "CallTrace": "security.call_trace",
                        "SourceThreadId": "process.thread.id"}, "process_access"),
    "create_remote_thread": ({**_ACCESS, "StartAddress": "security.start_address",
                              "StartModule": "security.start_module", "StartFunction": "security.start_function",
                              "NewThreadId": "target.process.thread.id"}, "process_access"),
    "raw_access_thread": ({**_ACTOR, "Device": "file.device"}, "raw_access"),
    "pipe_created": ({**_ACTOR, "PipeName": "file.name"}, "pipe"),
    "ps_script": ({"ScriptBlockText": "powershell.file.script_block_text",
                   "ScriptBlockId": "powershell.file.script_block_id", "Path": "file.path",
                   "MessageNumber": "powershell.sequence", "MessageTotal": "powershell.total"}, "ps_script"),
    "ps_module": ({"Payload": "powershell.payload", "ContextInfo": "powershell.context_info"}, "ps_module"),
}
# where a rule names Sysmon's Hashes, it is split into one field per algorithm (see _hashes)
HASHED = {"process_creation", "image_load", "driver_load"}
# the registry categories are one category of events here, told apart by what was done
REGISTRY_ACTIONS = {"registry_add": ["create-key"], "registry_delete": ["delete-key", "delete-value"],
                    "registry_set": ["set-value"]}
# Sigma service -> the Event Log channels its rules read (SigmaHQ's Windows logsource table)
SERVICES = {
    "security": ["Security"], "system": ["System"], "application": ["Application"],
    "sysmon": ["Microsoft-Windows-Sysmon/Operational"], "powershell": ["Microsoft-Windows-PowerShell/Operational"],
    "powershell-classic": ["Windows PowerShell"], "taskscheduler": ["Microsoft-Windows-TaskScheduler/Operational"],
    "wmi": ["Microsoft-Windows-WMI-Activity/Operational"], "dns-server": ["DNS Server"],
    "dns-client": ["Microsoft-Windows-DNS Client Events/Operational"], "ntlm": ["Microsoft-Windows-NTLM/Operational"],
    "windefend": ["Microsoft-Windows-Windows Defender/Operational"],
    "firewall-as": ["Microsoft-Windows-Windows Firewall With Advanced Security/Firewall"],
    "bits-client": ["Microsoft-Windows-Bits-Client/Operational"],
    "codeintegrity-operational": ["Microsoft-Windows-CodeIntegrity/Operational"],
    "appxdeployment-server": ["Microsoft-Windows-AppXDeploymentServer/Operational"],
    "msexchange-management": ["MSExchange Management"], "shell-core": ["Microsoft-Windows-Shell-Core/Operational"],
    "terminalservices-localsessionmanager": ["Microsoft-Windows-TerminalServices-LocalSessionManager/Operational"],
    "applocker": ["Microsoft-Windows-AppLocker/EXE and DLL", "Microsoft-Windows-AppLocker/MSI and Script",
                  "Microsoft-Windows-AppLocker/Packaged app-Deployment", "Microsoft-Windows-AppLocker/Packaged app-Execution"],
    "security-mitigations": ["Microsoft-Windows-Security-Mitigations/Kernel Mode",
                             "Microsoft-Windows-Security-Mitigations/User Mode"],
}
_WINLOG = {"EventID": "winlog.event_id", "Provider_Name": "winlog.provider_name", "Channel": "winlog.channel",
           "Computer": "winlog.computer_name"}
EVENT_DATA = "winlog.event_data."


def _raw_fields(record: str) -> set[str]:
    """The Event Log field names of every etw/ event that becomes `record` (Sysmon, Security)."""
    return {f for p in load().values() if p.source == "eventlog" for e in p.events.values()
            if e.record == record for f in e.fields}


def pipeline() -> ProcessingPipeline:
    """Category rules: Sysmon names to the schema, the names with no schema home to the record's
    own field (winlog.event_data.*, which `sensor hunt` keeps); service rules: everything to winlog.*."""
    items = []
    for cat, (mapping, record) in CATEGORIES.items():
        def when(cat=cat):  # a condition object belongs to one item
            return [LogsourceCondition(category=cat, product="windows")]
        if cat in HASHED:
            items.append(ProcessingItem(HashesFieldsDetectionItemTransformation(
                valid_hash_algos=["MD5", "SHA1", "SHA256", "IMPHASH"], field_prefix="Hash"),
                rule_conditions=when(), identifier=f"sensor_{cat}_hashes"))
        items.append(ProcessingItem(FieldMappingTransformation({**mapping, **_WINLOG}), rule_conditions=when(),
                                    identifier=f"sensor_{cat}"))
        raw = sorted(_raw_fields(record) - set(mapping) - {"Initiated"})  # Initiated: read from network.direction
        items.append(ProcessingItem(AddFieldnamePrefixTransformation(EVENT_DATA), rule_conditions=when(),
                                    field_name_conditions=[IncludeFieldCondition(raw)], identifier=f"sensor_{cat}_raw"))
        if cat in REGISTRY_ACTIONS:
            items.append(ProcessingItem(AddConditionTransformation({"event.action": REGISTRY_ACTIONS[cat]}),
                                        rule_conditions=when(), identifier=f"sensor_{cat}_action"))
    for service, channels in SERVICES.items():
        def when(service=service):
            return [LogsourceCondition(service=service, product="windows")]
        items.append(ProcessingItem(FieldMappingTransformation(_WINLOG), rule_conditions=when(),
                                    identifier=f"sensor_{service}"))
        items.append(ProcessingItem(AddFieldnamePrefixTransformation(EVENT_DATA), rule_conditions=when(),
                                    field_name_conditions=[ExcludeFieldCondition([r"winlog\..*"], "re")],
                                    identifier=f"sensor_{service}_raw"))
        # no winlog.channel condition: a service rule meets only its channels' records (its index is
        # chosen by channel, see _categories), and a condition that always holds there would be the
        # literal the index picks, making the rule a candidate for every record of its event id
    return ProcessingPipeline(name="sensor: Sysmon and Security fields to the sensor's schema", priority=20,
                              items=items)


_PIPELINE = pipeline()


def _fields(detection) -> set[str]:
    out = set()
    for item in detection.detection_items:
        if isinstance(item, SigmaDetection):
            out |= _fields(item)
        elif item.field is not None:
            out.add(item.field)
    return out


def compile_windows(rule: SigmaRule, path: str, products=("linux", "windows")):
    """A Windows rule through the pipeline, then the engine's compiler; others as they are."""
    ls = rule.logsource
    if ls.product != "windows":
        return compile_rule(rule, path, products)
    if ls.category is not None:
        if ls.category not in CATEGORIES:
            raise Unsupported(f"logsource category {ls.category!r}: no Windows event of this sensor has it")
        category = "registry" if ls.category.startswith("registry_") else ls.category
    elif ls.service in SERVICES:
        category = f"winlog:{ls.service}"  # one index per service: an event meets its channel's rules only
    else:
        raise Unsupported(f"logsource service {ls.service!r}: no channel of it is known here")
    _PIPELINE.apply(rule)
    names = set().union(*(_fields(d) for d in rule.detection.detections.values()))
    known = {f for f in names if f.startswith(("winlog.", "event.")) or f in _SCHEMA or f == "Initiated"}
    if names - known:
        raise Unsupported(f"field {sorted(names - known)[0]!r}: no Windows event of this sensor carries it")
    fields = {f: "network.direction" if f == "Initiated" else f for f in known}
    compiled = compile_rule(rule, path, products, fields=fields, category=category)
    if category.startswith("winlog:"):  # indexed by event id too, where the condition fixes it
        ids = _event_ids(rule.detection.parsed_condition[0].parse())
        compiled.category += ":" + (",".join(map(str, sorted(ids))) if ids else "*")
    return compiled


def _event_ids(node) -> set[int] | None:
    """The EventIDs one of which every match has, or None when the condition does not fix them."""
    if isinstance(node, sc.ConditionAND):
        found = [x for a in node.args if (x := _event_ids(a)) is not None]
        return set.intersection(*found) if found else None
    if isinstance(node, sc.ConditionOR):
        kids = [_event_ids(a) for a in node.args]
        return None if any(k is None for k in kids) else set().union(*kids)
    if isinstance(node, sc.ConditionFieldEqualsValueExpression) and node.field == "winlog.event_id" \
            and isinstance(node.value, st.SigmaNumber):
        return {int(node.value.number)}
    return None


_SCHEMA = {path for mapping, _ in CATEGORIES.values() for path in mapping.values()}


class WindowsRuleSet(RuleSet):
    """Linux and Windows rules; service rules (Security, System, ... log records) are evaluated on
    every event that came from such a record (it has `winlog`), besides its category's rules."""

    def __init__(self, rules, reports):
        super().__init__([r for r in rules if not r.category.startswith("winlog:")], reports)
        service = [r for r in rules if r.category.startswith("winlog:")]
        # winlog:SERVICE:ID,ID... -> one copy per id (sharing the matcher); winlog:SERVICE:* as it is
        by_id = [replace(r, category=f"{r.category.rsplit(':', 1)[0]}:{i}") for r in service
                 if not r.category.endswith(":*") for i in r.category.rsplit(":", 1)[1].split(",")]
        self.winlog = _Winlog(by_id, [])
        self.winlog_any = _WinlogAny([r for r in service if r.category.endswith(":*")], [])
        self.rules = rules

    @staticmethod
    def category_of(event: dict) -> str | None:
        ev = event.get("event", {})
        if ev.get("dataset") == "registry":
            return "registry"
        return ACTIVITY.get(ev.get("action")) or category_of(event)

    @classmethod
    def load(cls, paths, products=("linux", "windows"), compile=compile_windows) -> "WindowsRuleSet":
        return super().load(paths, products, compile)

    def match(self, event: dict) -> list:
        hits = super().match(event)
        w = event.get("winlog")
        if w is not None:
            by_id, any_id = _categories(w.get("channel"), w.get("event_id"))
            if by_id in self.winlog.index:  # most records have no service rule of their id
                hits += self.winlog.match(event)
            if any_id in self.winlog_any.index:
                hits += self.winlog_any.match(event)
        return hits


_SERVICE_OF = {channel.lower(): service for service, channels in SERVICES.items() for channel in channels}


@lru_cache(maxsize=4096)
def _categories(channel: str | None, event_id) -> tuple[str | None, str | None]:
    """The service-rule categories of a record of `channel` with `event_id`: by its id, and any id."""
    service = _SERVICE_OF.get((channel or "").lower())
    return (f"winlog:{service}:{event_id}", f"winlog:{service}:*") if service else (None, None)


class _Winlog(RuleSet):
    @staticmethod
    def category_of(event: dict) -> str | None:
        w = event["winlog"]
        return _categories(w.get("channel"), w.get("event_id"))[0]


class _WinlogAny(RuleSet):
    @staticmethod
    def category_of(event: dict) -> str | None:
        w = event["winlog"]
        return _categories(w.get("channel"), w.get("event_id"))[1]


def load_rules(paths) -> WindowsRuleSet:
    return WindowsRuleSet.load(paths)
