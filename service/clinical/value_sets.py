"""The value sets the rules read, as FHIR R4 ValueSet resources (no I/O beyond the package's data files, no Flask).

``data/value_sets.toml`` declares each set as a selection of rows of a data file (one more per analyte of
``analytes.csv``); the codes are exactly those the rules match (``codes.medication_entries`` and the other tables),
each with the published sources that hold it and their versions (``data/provenance.csv``, ``data/sources.csv``,
rebuilt by ``scripts/build_value_sets.py``). ICD-10-CM code prefixes are FHIR filters (the expansion says it is not
closed); text fragments, which FHIR cannot express as codes, are listed in the description.
"""

from __future__ import annotations

import csv
import hashlib
import re
import tomllib
import uuid
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from service.clinical.codes import ATC, ICD10CM, LOINC, OMIM, ORPHANET, RXNORM, SNOMED, medication_entries

FHIR_PATH = "fhir/ValueSet"
SYSTEM_NAMES = {
    RXNORM: "RxNorm",
    ATC: "WHO ATC",
    SNOMED: "SNOMED CT",
    LOINC: "LOINC",
    ICD10CM: "ICD-10-CM",
    ORPHANET: "Orphanet",
    OMIM: "OMIM",
}
COPYRIGHT = {
    RXNORM: "RxNorm is produced by the US National Library of Medicine (NLM); its content is under the UMLS and "
    "RxNorm terms of use of its sources.",
    SNOMED: "SNOMED CT content is copyright of SNOMED International, used under its licence (in the US through the "
    "NLM's UMLS licence).",
    LOINC: "LOINC codes and names are copyright Regenstrief Institute, Inc., under the LOINC licence "
    "(https://loinc.org/license).",
    ATC: "WHO ATC codes are maintained by the WHO Collaborating Centre for Drug Statistics Methodology.",
    ICD10CM: "ICD-10-CM is maintained by the US National Center for Health Statistics (CDC).",
    ORPHANET: "Orphanet nomenclature: INSERM, CC BY 4.0.",
    OMIM: "OMIM numbers: Johns Hopkins University.",
}


@dataclass(frozen=True)
class Member:
    system: str  # empty for a text fragment
    code: str
    display: str
    match: str  # code | prefix | text | atc-prefix
    citation: str  # the row's own source column


@dataclass(frozen=True)
class ValueSetDefinition:
    id: str
    title: str
    purpose: str
    hooks: tuple[str, ...]
    members: tuple[Member, ...]


def _data(name: str) -> str:
    return resources.files("service.clinical").joinpath("data", name).read_text(encoding="utf-8")


def _rows(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(_data(name).splitlines()))


def _usable(row: dict[str, str]) -> bool:
    return row.get("status", "VERIFIED") in ("VERIFIED", "PARTIAL")


def _select(table: str, select: dict[str, str]) -> list[Member]:
    if table == "medications":
        found = []
        raw = {(r["group"], r["match"], r["system"], r["code"].lower()): r for r in _rows("medications.csv")}
        table_sources = {r["rxcui"]: r["sources"] for r in _rows("rxnorm_antiresorptives.csv")}
        for entry in medication_entries():
            if entry.group != select.get("group", entry.group):
                continue
            if "ingredient" in select and entry.ingredient != select["ingredient"]:
                continue
            row = raw.get((entry.group, entry.match, entry.system, entry.code.lower()))
            citation = row["source"] if row else f"rxnorm_antiresorptives.csv: {table_sources.get(entry.code, '')}"
            found.append(Member(entry.system, entry.code, entry.display, entry.match, citation))
        return found
    if table == "conditions":
        return [
            Member(r["system"], r["code"], r["display"], r["match"], r["source"])
            for r in _rows("conditions.csv")
            if _usable(r) and all(r[k] == v for k, v in select.items())
        ]
    if table in ("analytes", "context_observations", "workup_tests"):
        rows = _rows(f"{table}.csv")
        return [
            Member(LOINC, r["loinc"], r["display"], "code", r["source"])
            for r in rows
            if _usable(r) and all(r[k] == v for k, v in select.items())
        ]
    if table == "pregnancy_status_answers":
        return [Member(r["system"], r["code"], r["display"], "code", r["source"]) for r in _rows(f"{table}.csv")]
    raise ValueError(f"value_sets.toml: unknown table {table!r}")


@cache
def definitions() -> tuple[ValueSetDefinition, ...]:
    spec = tomllib.loads(_data("value_sets.toml"))
    found = [
        ValueSetDefinition(
            v["id"], v["title"], v["purpose"], tuple(v["hooks"]), tuple(_select(v["table"], v["select"]))
        )
        for v in spec["value_set"]
    ]
    labs: dict[str, list[dict[str, str]]] = {}
    for r in _rows("analytes.csv"):
        labs.setdefault(r["analyte"], []).append(r)
    for analyte, rows in labs.items():
        names = sorted({r["display"] for r in rows}, key=len)
        found.append(
            ValueSetDefinition(
                "lab-" + analyte.replace("_", "-"),
                f"Laboratory results read as {analyte.replace('_', ' ')}: {names[0]}",
                "A result of this analyte, read in the canonical unit of its group (data/units.csv) and judged "
                "against the lab's range or a sourced reference interval.",
                ("patient-view", "order-select", "order-sign"),
                tuple(_select("analytes", {"analyte": analyte})),
            )
        )
    ids = [d.id for d in found]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise ValueError(f"value_sets.toml: ids used twice: {sorted(duplicates)}")
    return tuple(found)


@cache
def build_date() -> str:
    return tomllib.loads(_data("value_sets.toml"))["date"]


@cache
def sources() -> dict[str, dict[str, str]]:
    return {r["key"]: r for r in _rows("sources.csv")}


@cache
def provenance() -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(system, code) -> [(source key, detail)] from ``data/provenance.csv``."""
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for r in _rows("provenance.csv"):
        pair = (r["source"], r["detail"])
        seen = found.setdefault((r["system"], r["code"]), [])
        if pair not in seen:
            seen.append(pair)
    return found


def source_note(system: str, code: str) -> str:
    """Where a code comes from, with versions: what the ValueSet's concept comment says."""
    notes = []
    for key, detail in provenance().get((system, code), []):
        if key == "VSAC":
            notes.append(f"VSAC {detail}")
        elif key == "WHO-ATC":
            notes.append(detail)
        elif key == "REF":
            notes.append(f"cited: {detail}")
        else:
            notes.append(f"{key} ({sources()[key]['version']})")
    return "; ".join(notes)


def _regex(prefix: str) -> str:
    """An ICD-10-CM code prefix as the table writes it (no dot) -> a regex over the dotted code."""
    if len(prefix) <= 3:
        return re.escape(prefix) + ".*"
    return re.escape(prefix[:3]) + r"\." + re.escape(prefix[3:]) + ".*"


def _name(value_set_id: str) -> str:
    return "AlpCds" + "".join(part.capitalize() for part in re.split(r"[-_]", value_set_id))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def value_set(definition: ValueSetDefinition, base: str, summary: bool = False) -> dict[str, Any]:
    """The ValueSet resource (``summary``: without compose and expansion, as ``_summary=true`` asks)."""
    includes: dict[str, dict[str, Any]] = {}
    contains: list[dict[str, str]] = []
    texts: list[str] = []
    seen: set[tuple[str, str]] = set()
    for m in definition.members:
        if m.match == "text":
            texts.append(m.code)
            continue
        include = includes.setdefault(m.system, {"system": m.system})
        if m.match in ("prefix", "atc-prefix"):
            value = m.code if m.match == "atc-prefix" else _regex(m.code)
            op = "is-a" if m.match == "atc-prefix" else "regex"
            prop = "concept" if m.match == "atc-prefix" else "code"
            include.setdefault("filter", []).append({"property": prop, "op": op, "value": value})
            continue
        if (m.system, m.code) in seen:
            continue
        seen.add((m.system, m.code))
        concept: dict[str, Any] = {"code": m.code, "display": m.display}
        note = source_note(m.system, m.code)
        if note:
            concept["extension"] = [
                {"url": "http://hl7.org/fhir/StructureDefinition/valueset-concept-comments", "valueString": note}
            ]
        include.setdefault("concept", []).append(concept)
        contains.append({"system": m.system, "code": m.code, "display": m.display})
    # A FHIR include holds concepts or filters of one system, not both.
    compose = []
    for include in includes.values():
        if "concept" in include:
            compose.append({"system": include["system"], "concept": include["concept"]})
        if "filter" in include:
            compose.extend({"system": include["system"], "filter": [f]} for f in include["filter"])
    digest = hashlib.sha256(repr((compose, sorted(texts))).encode()).hexdigest()[:10]
    version = f"{build_date()}.{digest}"
    systems = sorted({m.system for m in definition.members if m.system})
    filtered = any("filter" in c for c in compose)
    if not compose:
        raise ValueError(f"value set {definition.id}: no code to serve")
    description = f"{definition.title}. {definition.purpose} Codes: {len(contains)}"
    if filtered:
        description += (
            "; and the codes under these filters: ICD-10-CM codes starting with the prefixes given (written with or "
            "without the dot), WHO ATC codes under the class codes given"
        )
    if texts:
        description += (
            ". When no code places a record, its text is matched (case-insensitive, as a fragment of the drug's or "
            "diagnosis's text): " + ", ".join(f"'{t}'" for t in sorted(set(texts)))
        )
    description += (
        ". Every code names its sources and their versions (the concept's comment); the sources are listed in the "
        "service's data/sources.csv."
    )
    summary_line = f"{_escape(definition.title)}: {len(contains)} codes{' and code filters' if filtered else ''}."
    resource: dict[str, Any] = {
        "resourceType": "ValueSet",
        "id": definition.id,
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{summary_line}</p></div>',
        },
        "url": f"{base}/{FHIR_PATH}/{definition.id}",
        "version": version,
        "name": _name(definition.id),
        "title": definition.title,
        "status": "active",
        "experimental": False,
        "date": build_date(),
        "publisher": "alp-cds",
        "description": description,
        "purpose": definition.purpose,
    }
    copyright_text = " ".join(COPYRIGHT[s] for s in systems if s in COPYRIGHT)
    if copyright_text:
        resource["copyright"] = copyright_text
    if summary:
        resource["meta"] = {
            "tag": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}]
        }
        return resource
    resource["compose"] = {"include": compose}
    expansion: dict[str, Any] = {
        "identifier": "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, resource["url"] + "|" + version)),
        "timestamp": build_date() + "T00:00:00Z",
        "total": len(contains),
    }
    if contains:
        expansion["contains"] = contains
    if filtered:
        unclosed = {"url": "http://hl7.org/fhir/StructureDefinition/valueset-unclosed", "valueBoolean": True}
        expansion = {"extension": [unclosed], **expansion}
    resource["expansion"] = expansion
    return resource


def by_id() -> dict[str, ValueSetDefinition]:
    return {d.id: d for d in definitions()}


def for_hook(hook: str) -> list[str]:
    """The ids of the value sets a service of this hook reads."""
    return [d.id for d in definitions() if hook in d.hooks]
