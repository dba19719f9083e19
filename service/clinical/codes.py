"""Codes, units and thresholds, loaded once from the CSV files in ``data/`` (each row names its source)."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ATC = "http://www.whocc.no/atc"
# The HL7 OIDs of these code systems, as C-CDA-derived FHIR often writes them (identifiers of the canonical
# CodeSystems: SNOMED CT in the FHIR R4 core package, ATC in fhir.tx.support.r3; LOINC and RxNorm as HL7 registers).
SYSTEM_ALIASES = {
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "urn:oid:2.16.840.1.113883.6.73": ATC,
    "urn:oid:2.16.840.1.113883.6.90": "http://hl7.org/fhir/sid/icd-10-cm",
    "urn:oid:2.16.840.1.113883.6.4": "http://www.cms.gov/Medicare/Coding/ICD10",  # ICD-10-PCS
    "urn:oid:2.16.840.1.113883.6.12": "http://www.ama-assn.org/go/cpt",
    # Orphanet and OMIM as EHRs write them (scheme, www, the ORDO path).
    "http://orpha.net": "http://www.orpha.net",
    "http://www.orpha.net/ordo": "http://www.orpha.net",
    "http://www.orpha.net/ORDO": "http://www.orpha.net",
    "http://omim.org": "http://www.omim.org",
    "http://www.omim.org/entry": "http://www.omim.org",
    "http://omim.org/entry": "http://www.omim.org",
}


def canonical_system(system: object) -> str | None:
    """A code system URI as the value sets write it: no trailing slash, http for https, OIDs mapped; the scheme and
    the host in any case (they are case-insensitive, RFC 3986: ``HTTP://WWW.NLM.NIH.GOV/research/umls/rxnorm``,
    ``URN:OID:2.16.840.1.113883.6.88``), the path as written."""
    if not isinstance(system, str):
        return None
    cleaned = system.strip().rstrip("/")
    web = re.match(r"(?i)(https?)://([^/?#]*)", cleaned)
    if web:
        cleaned = f"http://{web.group(2).lower()}{cleaned[web.end() :]}"
    elif cleaned[:8].lower() == "urn:oid:":
        cleaned = "urn:oid:" + cleaned[8:]
    return SYSTEM_ALIASES.get(cleaned, cleaned)


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("service.clinical").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


@dataclass(frozen=True)
class Analyte:
    loinc: str
    analyte: str
    display: str
    unit_group: str


@cache
def analytes() -> dict[str, Analyte]:
    """LOINC code -> analyte."""
    return {r["loinc"]: Analyte(r["loinc"], r["analyte"], r["display"], r["unit_group"]) for r in _rows("analytes.csv")}


def loinc_codes(*names: str) -> list[str]:
    """LOINC codes of the named analytes, in file order."""
    return [code for code, a in analytes().items() if a.analyte in names]


@cache
def _unit_table() -> dict[str, tuple[str, dict[str, float]]]:
    table: dict[str, tuple[str, dict[str, float]]] = {}
    for r in _rows("units.csv"):
        _, factors = table.setdefault(r["unit_group"], (r["canonical"], {}))
        factors[r["unit"]] = float(r["factor"])
    return table


@lru_cache(maxsize=1024)
def normalise_unit(unit: str) -> str:
    """Lower case, micro sign to u, no spaces, UCUM annotations dropped: ``"µmol/L"`` -> ``"umol/l"``,
    ``"U/L{37Cel}"`` -> ``"u/l"`` (an annotation in braces carries no meaning in UCUM). A unit that is only an
    annotation, such as ``{creat}`` in ``umol/g{creat}``, keeps it."""
    cleaned = re.sub(r"\s+", "", unit.replace("µ", "u").replace("μ", "u")).lower()
    bare = re.sub(r"\{[^{}]*\}", "", cleaned)
    return bare if bare and bare != cleaned and not cleaned.endswith("{creat}") else cleaned


@lru_cache(maxsize=1024)
def _factor(unit: str, unit_group: str) -> tuple[float, str] | None:
    canonical, factors = _unit_table()[unit_group]
    factor = factors.get(normalise_unit(unit))
    return None if factor is None else (factor, canonical)


def convert(value: float, unit: str | None, unit_group: str) -> tuple[float, str] | None:
    """Value in the group's canonical unit, or None for a unit the table does not know (never guessed)."""
    # A ratio (INR) is often sent with no unit: the table's empty unit stands for it; other groups have none.
    found = _factor(unit if unit is not None else "", unit_group)
    return None if found is None else (value * found[0], found[1])


@cache
def thresholds() -> dict[str, float]:
    return {r["name"]: float(r["value"]) for r in _rows("thresholds.csv")}


@dataclass(frozen=True)
class ReferenceBand:
    """A reference interval for one analyte, sex and age band, in the analyte's canonical unit."""

    analyte: str
    sex: str  # male | female | any
    age_from: tuple[int, str]  # (amount, unit d|m|y): from this calendar age
    age_to: tuple[int, str] | None  # up to (not including) this calendar age; None for the open adult band
    low: float | None
    high: float | None
    label: str  # what the card says the limit is, e.g. "Mayo Clinic Laboratories adult interval"
    source: str


def _age(text: str) -> tuple[int, str] | None:
    """``"15d"``, ``"7m"``, ``"19y"`` -> (15, "d")...; empty -> None (no upper bound)."""
    if not text:
        return None
    if text[-1] not in "dmy":
        raise ValueError(f"reference data: age {text!r} must end in d, m or y")
    return int(text[:-1]), text[-1]


def _canonical(value: str, unit: str, unit_group: str) -> float | None:
    if not value:
        return None
    converted = convert(float(value), unit, unit_group)
    if converted is None:
        raise ValueError(f"reference data: unit {unit!r} unknown for {unit_group}")
    return converted[0]


def _unit_group(analyte: str) -> str:
    return next(a.unit_group for a in analytes().values() if a.analyte == analyte)


@cache
def reference_bands() -> dict[str, tuple[ReferenceBand, ...]]:
    """Fallback reference intervals per analyte (used only when the lab sends no range and no flag)."""
    bands: dict[str, list[ReferenceBand]] = {}
    for r in _rows("reference_intervals.csv"):
        group = _unit_group(r["analyte"])
        bands.setdefault(r["analyte"], []).append(
            ReferenceBand(
                r["analyte"],
                r["sex"],
                _age(r["age_from"]) or (0, "d"),
                _age(r["age_to"]),
                _canonical(r["low"], r["unit"], group),
                _canonical(r["high"], r["unit"], group),
                r["label"],
                r["source"],
            )
        )
    return {analyte: tuple(rows) for analyte, rows in bands.items()}


@cache
def plausible_ranges() -> dict[str, tuple[float | None, float | None, str]]:
    """Analyte -> (lowest, highest possible value in the canonical unit, canonical unit): outside is not a result."""
    ranges = {}
    for r in _rows("plausibility.csv"):
        group = _unit_group(r["analyte"])
        ranges[r["analyte"]] = (
            _canonical(r["low"], r["unit"], group),
            _canonical(r["high"], r["unit"], group),
            _unit_table()[group][0],
        )
    return ranges


@dataclass(frozen=True)
class WorkupTest:
    key: str
    loinc: str
    display: str
    analyte: str
    group: str
    abnormal_when: str
    explanation: str
    recommended: bool
    note: str


@cache
def workup_tests() -> dict[str, WorkupTest]:
    return {
        r["key"]: WorkupTest(
            r["key"],
            r["loinc"],
            r["display"],
            r["analyte"],
            r["group"],
            r["abnormal_when"],
            r["explanation"],
            r["recommended"] == "yes",
            r["note"],
        )
        for r in _rows("workup_tests.csv")
    }


@dataclass(frozen=True)
class MedicationEntry:
    group: str
    tier: str
    match: str  # code | atc-prefix | text
    system: str
    code: str
    display: str
    ingredient: str  # empty for a class-level entry (an ATC group)


@cache
def medication_entries() -> tuple[MedicationEntry, ...]:
    """The value sets: ``medications.csv``, where an ``rxnorm-table`` row stands for every RxNorm code of its
    ingredient in ``rxnorm_antiresorptives.csv`` (products, packs, brands; sources per code in that file, rebuilt
    by ``scripts/build_value_sets.py``). A code the table marks ``oncology`` (denosumab 120 mg, Xgeva-type) is in
    the ``denosumab_oncology`` group as well."""
    products: dict[str, list[dict[str, str]]] = {}
    for r in _rows("rxnorm_antiresorptives.csv"):
        products.setdefault(r["ingredient"], []).append(r)
    entries: list[MedicationEntry] = []
    for r in _rows("medications.csv"):
        if r["status"] not in ("VERIFIED", "PARTIAL"):
            continue
        if r["match"] == "rxnorm-table":
            for p in products[r["ingredient"]]:
                entries.append(
                    MedicationEntry(r["group"], r["tier"], "code", r["system"], p["rxcui"], p["name"], r["ingredient"])
                )
                if p["oncology"] == "yes":
                    entries.append(
                        MedicationEntry(
                            "denosumab_oncology", r["tier"], "code", r["system"], p["rxcui"], p["name"], r["ingredient"]
                        )
                    )
            continue
        code = r["code"].lower() if r["match"] == "text" else r["code"]
        entries.append(
            MedicationEntry(r["group"], r["tier"], r["match"], r["system"], code, r["display"], r["ingredient"])
        )
    return tuple(entries)


ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"  # WHO ICD-10
ORPHANET = "http://www.orpha.net"
OMIM = "http://www.omim.org"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
CPT = "http://www.ama-assn.org/go/cpt"


@dataclass(frozen=True)
class ConditionEntry:
    group: str  # hpp | pregnancy | postpartum | fracture | ckd_severe | alp_raising; acute_event (procedures)
    kind: str
    match: str  # code | prefix | text
    system: str
    code: str  # for ``prefix`` the start of an ICD-10-CM code without its dot; for ``text`` a lower-case fragment
    display: str


def condition_code(system: str | None, code: str) -> str:
    """A condition code as the table writes it: ICD-10-CM without its dot and in capitals; Orphanet and OMIM without
    the prefixes EHRs put before the number (``ORPHA:436``, ``Orphanet_436``, ``OMIM:146300``, ``MIM:146300``)."""
    cleaned = code.strip()
    if system in (ICD10CM, ICD10, ICD10PCS):
        return cleaned.replace(".", "").upper()
    if system in (ORPHANET, OMIM):
        return re.sub(r"^(?:orpha(?:net)?|omim|mim)[:_ #]*", "", cleaned, flags=re.IGNORECASE)
    return cleaned


def _entries(name: str) -> tuple[ConditionEntry, ...]:
    return tuple(
        ConditionEntry(
            r["group"],
            r["kind"],
            r["match"],
            r["system"],
            r["code"].lower() if r["match"] == "text" else condition_code(r["system"], r["code"]),
            r["display"],
        )
        for r in _rows(name)
        if r["status"] in ("VERIFIED", "PARTIAL")
    )


@cache
def condition_entries() -> tuple[ConditionEntry, ...]:
    """The condition value sets of ``data/conditions.csv`` (VERIFIED and PARTIAL rows; each names its source)."""
    return _entries("conditions.csv")


@cache
def procedure_entries() -> tuple[ConditionEntry, ...]:
    """The procedures of ``data/procedures.csv`` after which a low ALP is most likely temporary: surgery,
    transfusion, apheresis (group ``acute_event``; built by scripts/build_value_sets.py from VSAC)."""
    return _entries("procedures.csv")


@dataclass(frozen=True)
class ContextObservation:
    loinc: str
    kind: str  # status | due_date | delivery_date
    display: str


@cache
def context_observations() -> dict[str, ContextObservation]:
    """LOINC code -> the pregnancy Observations the chart reads (``data/context_observations.csv``)."""
    return {
        r["loinc"]: ContextObservation(r["loinc"], r["kind"], r["display"])
        for r in _rows("context_observations.csv")
        if r["status"] in ("VERIFIED", "PARTIAL")
    }


@cache
def pregnancy_answers() -> dict[tuple[str, str], bool]:
    """(system, code) of a pregnancy-status answer -> pregnant or not (``data/context_observations.csv``'s answers)."""
    return {
        (r["system"], r["code"]): r["pregnant"] == "yes"
        for r in _rows("pregnancy_status_answers.csv")
        if r["status"] in ("VERIFIED", "PARTIAL")
    }
