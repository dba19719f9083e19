"""Rebuild the terminology tables from pinned published sources (by hand, not in CI).

    .venv/bin/python scripts/build_value_sets.py                       # read the sources from the network
    .venv/bin/python scripts/build_value_sets.py --mirrors /work/.mirror --carry   # from local git mirrors

Every source is a file of a public repository at a pinned commit (``PINNED`` below; ``data/sources.csv`` names each
with its version and licence). A file is read from a local bare mirror (``--mirrors DIR``: ``DIR/owner+name/repo``,
read with ``git show <commit>:<path>``) when one holds it, else fetched from the repository's raw-file address at
that commit (network). A source that cannot be had stops the run, unless ``--carry`` is given: then the codes that
the committed table attributes to it are carried over unchanged, and the run says so.

It writes, in ``service/clinical/data/``:

- ``rxnorm_antiresorptives.csv``: every RxNorm code the sources give for an antiresorptive, romosozumab or SERM
  ingredient (ingredients, products (SCD, SBD), packs, brands, groups), recognised by the ingredient's and brands'
  names in the source's own display, with the sources that list it (``;``-separated keys of ``sources.csv``) and
  whether it is the 120 mg oncology denosumab (Xgeva-type);
- ``provenance.csv``: for every code a rule reads (the ``code`` rows of ``medications.csv``, ``conditions.csv``,
  ``analytes.csv``, ``context_observations.csv``, ``pregnancy_status_answers.csv``, ``workup_tests.csv`` and the
  RxNorm table), the
  published value sets or code systems that contain it, with their versions: the VSAC value sets the row names
  that hold it, else the sets of the pinned package that hold it (the first four; the whole package is read from
  a mirror, only the named sets over the network), the WHO ATC code system,
  and the medication lists above. A code that no machine-readable source places keeps the citation its row gives
  (``REF``), and the run lists them;

and ``tests/data/sandbox_medications.csv``: the CDS Hooks Sandbox's own medication list cut to the antiresorptive,
romosozumab and SERM products (the Sandbox check of ``tests/test_value_sets.py`` reads it, offline).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import subprocess
import sys
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "service" / "clinical" / "data"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
LOINC = "http://loinc.org"

FHIR_PACKAGES = ("FHIR/packages", "305d23e61344102fecd8e37aeffc7ba32f9d29b7")
PINNED = {
    "vsac": (*FHIR_PACKAGES, "packages/us.nlm.vsac/package/ValueSet-{oid}.json"),
    "phin": (*FHIR_PACKAGES, "packages/us.cdc.phinvads/package/ValueSet-{oid}.json"),
    "atc": (*FHIR_PACKAGES, "packages/fhir.tx.support.r3/package/CodeSystem-atc.json"),
    "sandbox": ("cds-hooks/sandbox", "3b7e25546771c6e7fc5e360aa7db6eb64af0b8b6", "src/assets/medication-list.js"),
    "odtp": ("dr-you-group/OsteoporosisTreatmentPathways", "dc04b417ef9625d1caa89e8aef8cdad2482c139f", "inst/cohorts"),
    "ema": (
        "mi-erasmusmc/ema-authorised-to-rxnorm-mappings",
        "9cebb0a6f37c02b07077d1cbb142df263549bb7c",
        "ema-to-rxnorm.tsv",
    ),
    "synthea": ("synthetichealth/synthea", "00f3c89a", "src/main/resources/costs/medications.csv"),
}
# Every cohort of the package (its concept sets name RxNorm codes in several files).
ODTP_FILES = [
    "ODTP_New_users_of_Bisphosphonate_as_first_line_therapy.json",
    "ODTP_New_users_of_Denosumab_as_first_line_therapy.json",
    "ODTP_New_users_of_IV_Bisphosphonate_as_first_line_therapy.json",
    "ODTP_New_users_of_PO_Bisphosphonate_as_first_line_therapy.json",
    "PTH_v1.json",
    "SERM_v1.json",
    "[ODTP] Bisphosphonate PO.json",
    "[ODTP] Bisphosphonate_IV.json",
    "[ODTP] Denosumab.json",
    "[ODTP] New users of Bisphosphonate as first line therapy.json",
    "[ODTP] New users of Denosumab as first line therapy.json",
    "[ODTP] Romosozumab.json",
    "[ODTP] SERM.json",
    "[ODTP] rhPTH.json",
    "bisphosphonate_IV_v1.json",
    "bisphosphonate_PO_v1.json",
    "denosumab v1.json",
    "romosozumab_v1.json",
]

# The VSAC value sets read for medications: key of sources.csv -> OID.
MEDICATION_SETS = {
    "VSAC-PIM": "2.16.840.1.113762.1.4.1078.783",
    "VSAC-Reclast": "2.16.840.1.113762.1.4.1078.696",
    "VSAC-BWH": "2.16.840.1.113762.1.4.1206.50",
    "VSAC-Allergy": "2.16.840.1.113762.1.4.1186.1",
    "VSAC-HormoneTherapy": "2.16.840.1.113762.1.4.1272.9",
    "VSAC-HarmfulEstrogens": "2.16.840.1.113883.3.464.1003.1253",
    "VSAC-BrandNames": "2.16.840.1.113762.1.4.1237.18",
}
PHIN_BRANDS = "2.16.840.1.113883.3.88.12.80.16"

# Ingredient -> the names (ingredient, salts, US brands) that place a source's display under it.
INGREDIENTS: dict[str, str] = {
    "alendronate": r"alendron|fosamax|binosto",
    "risedronate": r"risedron|actonel|atelvia",
    "ibandronate": r"ibandron|boniva",
    "zoledronic acid": r"zoledron|reclast|zometa",
    "pamidronate": r"pamidron|aredia",
    "etidronate": r"etidron|didronel",
    "clodronate": r"clodron",
    "tiludronate": r"tiludron|skelid",
    "denosumab": r"denosumab|prolia|xgeva",
    "romosozumab": r"romosozumab|evenity",
    "raloxifene": r"raloxifen|evista",
    "bazedoxifene": r"bazedoxifen|duavee",
    "calcitonin": r"calcitonin|miacalcin|fortical",
}
NOT_THESE = re.compile(r"gene.related", re.IGNORECASE)  # calcitonin gene-related peptide antagonists
# Denosumab 120 mg for bone metastases (Xgeva-type): 1.7 mL of 70 mg/mL, or the Xgeva brand.
ONCOLOGY = re.compile(r"xgeva|1\.7 ML denosumab|denosumab 70 MG/ML|120 MG", re.IGNORECASE)
OMOP_TTY = {
    "Ingredient": "IN",
    "Clinical Drug": "SCD",
    "Quant Clinical Drug": "SCD",
    "Branded Drug": "SBD",
    "Quant Branded Drug": "SBD",
    "Clinical Drug Comp": "SCDC",
    "Branded Drug Comp": "SBDC",
    "Clinical Drug Form": "SCDF",
    "Branded Drug Form": "SBDF",
    "Brand Name": "BN",
    "Clinical Pack": "GPCK",
    "Branded Pack": "BPCK",
}


class Unavailable(Exception):
    pass


class Sources:
    """Files of the pinned repositories: from a local mirror, else the network."""

    def __init__(self, mirrors: Path | None, network: bool) -> None:
        self.mirrors, self.network = mirrors, network

    def read(self, repo: str, commit: str, path: str) -> bytes:
        if self.mirrors is not None:
            git_dir = self.mirrors / repo.replace("/", "+") / "repo"
            if git_dir.exists():
                done = subprocess.run(
                    ["git", "--git-dir", str(git_dir), "show", f"{commit}:{path}"], capture_output=True, timeout=120
                )
                if done.returncode == 0 and done.stdout:
                    return done.stdout
        if self.network:
            url = f"https://raw.githubusercontent.com/{repo}/{commit}/{urllib.request.quote(path)}"
            try:
                with urllib.request.urlopen(url, timeout=60) as answer:
                    return answer.read()
            except OSError as exc:
                raise Unavailable(f"{repo}@{commit[:8]}:{path}: {exc}") from None
        raise Unavailable(f"{repo}@{commit[:8]}:{path}: not in the mirrors and --offline")

    def source(self, key: str, **names: str) -> bytes:
        repo, commit, path = PINNED[key]
        return self.read(repo, commit, path.format(**names))


def ingredient_of(name: str) -> str | None:
    if NOT_THESE.search(name):
        return None
    for ingredient, pattern in INGREDIENTS.items():
        if re.search(pattern, name, re.IGNORECASE):
            return ingredient
    return None


def tty_from_name(name: str) -> str:
    """RxNorm's term type as its name pattern shows it (matching never uses it)."""
    branded = "[" in name or re.match(r"^[A-Z][a-z]+( Plus D)?( Oral Product| Pill| Injectable Product)?$", name)
    if name.startswith("{"):
        return "BPCK" if re.search(r"Pack \[", name) else "GPCK"
    if re.search(r" (Pill|Oral Product|Injectable Product|Oral Liquid Product)$", name):
        return "SBDG" if branded else "SCDG"
    has_strength = bool(re.search(r"\d+(\.\d+)? (MG|UNT|ML|MG/ML)\b", name))
    has_form = bool(re.search(r"(Tablet|Capsule|Solution|Syringe|Injection|Spray|Product)\b", name))
    if has_strength and has_form:
        return "SBD" if branded else "SCD"
    if has_strength:
        return "SBDC" if branded else "SCDC"
    if has_form:
        return "SBDF" if branded else "SCDF"
    return "BN" if branded else "IN/PIN"


class Table:
    """The RxNorm codes found, with the names and term types the sources give and the sources' keys."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.tty: dict[str, str] = {}
        self.sources: dict[str, set[str]] = defaultdict(set)

    def add(self, code: str, name: str, key: str, tty: str | None = None, prefer_name: bool = False) -> None:
        if ingredient_of(name) is None or not code.isdigit():
            return
        if code not in self.names or prefer_name:
            self.names[code] = name
        if tty and (code not in self.tty or "inferred" in self.tty[code]):
            self.tty[code] = tty
        self.sources[code].add(key)


def vsac(sources: Sources, oid: str) -> dict:
    return json.loads(sources.source("vsac", oid=oid))


def read_medication_lists(sources: Sources, carry: bool, previous: list[dict[str, str]], log) -> Table:
    table = Table()
    for key, oid in MEDICATION_SETS.items():
        for item in vsac(sources, oid).get("expansion", {}).get("contains", []):
            if item.get("system") == RXNORM:
                table.add(item["code"], item.get("display", ""), key, prefer_name=True)

    def carried(key: str, why: Exception) -> None:
        if not carry:
            raise why
        rows = [r for r in previous if key in r["sources"].split(";")]
        print(f"carried from the committed table ({why}): {key}, {len(rows)} codes", file=log)
        for r in rows:
            table.add(r["rxcui"], r["name"], key, r["tty"])

    try:
        brands = json.loads(sources.source("phin", oid=PHIN_BRANDS))
        for include in brands.get("compose", {}).get("include", []):
            if include.get("system") == RXNORM:
                for concept in include.get("concept", []):
                    table.add(
                        concept["code"], concept.get("display", ""), "PHIN-BrandNames", "BN or BPCK (PHIN VS scope)"
                    )
    except Unavailable as exc:
        carried("PHIN-BrandNames", exc)

    for name in ODTP_FILES:
        repo, commit, folder = PINNED["odtp"]
        cohort = json.loads(sources.read(repo, commit, f"{folder}/{name}"))
        for concept_set in cohort.get("ConceptSets", []):
            for item in concept_set["expression"]["items"]:
                concept = item["concept"]
                if concept.get("VOCABULARY_ID") == "RxNorm" and not item.get("isExcluded"):
                    tty = OMOP_TTY.get(concept.get("CONCEPT_CLASS_ID", ""))
                    table.add(
                        str(concept["CONCEPT_CODE"]),
                        concept["CONCEPT_NAME"],
                        "OHDSI-ODTP",
                        f"{tty} (OMOP concept_class)" if tty else None,
                    )

    ema = csv.DictReader(io.StringIO(sources.source("ema").decode()), delimiter="\t")
    for row in ema:
        if row["vocabulary_id"] == "RxNorm" and row["rxcui"].isdigit():
            tty = OMOP_TTY.get(row["concept_class_id"])
            table.add(
                row["rxcui"], row["concept_name"], "EMA-RxNorm-map", f"{tty} (OMOP concept_class)" if tty else None
            )

    try:
        synthea = csv.DictReader(io.StringIO(sources.source("synthea").decode()))
        for row in synthea:
            code, name = row.get("CODE") or "", row.get("DESCRIPTION") or ""
            table.add(code, name, "Synthea")
    except Unavailable as exc:
        carried("Synthea", exc)

    for code, name, _prescribable in sandbox_list(sources):
        table.add(code, name, "CDS-Sandbox")
    return table


def sandbox_list(sources: Sources) -> list[tuple[str, str, bool]]:
    """The Sandbox's RxNorm list (code -> name), and which codes it offers as prescribable products."""
    text = sources.source("sandbox").decode()
    names = dict(re.findall(r"^\s+'?(\d+)'?: '((?:[^'\\]|\\.)*)',$", text.split("pillToComponentSets")[0], re.M))
    offered = text.split("componentSetsToPrescribables")[1]
    prescribable = set(re.findall(r"'(\d+)'", offered))
    return [(code, name, code in prescribable) for code, name in names.items() if ingredient_of(name)]


def write_table(table: Table, path: Path) -> list[dict[str, str]]:
    rows = []
    for code in table.names:
        name = table.names[code]
        rows.append(
            {
                "rxcui": code,
                "name": name,
                "ingredient": ingredient_of(name) or "",
                "tty": table.tty.get(code) or f"{tty_from_name(name)} (inferred from name)",
                "oncology": "yes" if ingredient_of(name) == "denosumab" and ONCOLOGY.search(name) else "",
                "sources": ";".join(sorted(table.sources[code])),
            }
        )
    order = list(INGREDIENTS)
    rows.sort(key=lambda r: (order.index(r["ingredient"]), int(r["rxcui"])))
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, ["rxcui", "name", "ingredient", "tty", "oncology", "sources"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


OID = re.compile(r"\b(?:2\.16\.840\.1\.[0-9.]*[0-9])")


def rows_of(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader((DATA / name).read_text(encoding="utf-8").splitlines()))


def read_codes() -> list[tuple[str, str, str, str]]:
    """(system, code, file, the row's own citation) for every code a rule reads."""
    found = []
    for name, system, code in [
        ("medications.csv", lambda r: r["system"], "code"),
        ("conditions.csv", lambda r: r["system"], "code"),
        ("analytes.csv", lambda r: LOINC, "loinc"),
        ("context_observations.csv", lambda r: LOINC, "loinc"),
        ("pregnancy_status_answers.csv", lambda r: r["system"], "code"),
        ("workup_tests.csv", lambda r: LOINC, "loinc"),
    ]:
        for r in rows_of(name):
            if r.get("match", "code") == "code" and r.get("status", "VERIFIED") in ("VERIFIED", "PARTIAL"):
                found.append((system(r), r[code], name, r["source"]))
    for r in rows_of("rxnorm_antiresorptives.csv"):
        found.append((RXNORM, r["rxcui"], "rxnorm_antiresorptives.csv", r["sources"]))
    return found


def vsac_index(sources: Sources, oids: set[str], log) -> tuple[dict, dict]:
    """(system, code) -> OIDs holding it, and OID -> (name, version, expansion timestamp, code system versions)."""
    index: dict[tuple[str, str], set[str]] = defaultdict(set)
    meta = {}
    for oid in sorted(oids):
        try:
            value_set = vsac(sources, oid)
        except Unavailable as exc:
            print(f"not read: {exc}", file=log)
            continue
        expansion = value_set.get("expansion", {})
        short = {RXNORM: "RxNorm", LOINC: "LOINC", "http://snomed.info/sct": "SNOMED CT"}
        systems = sorted(
            {
                f"{short.get(item.get('system'), item.get('system'))} {item['version'].rsplit('/', 1)[-1]}"
                for item in expansion.get("contains", [])
                if item.get("version")
            }
        )
        meta[oid] = (value_set.get("name", ""), value_set.get("version", ""), expansion.get("timestamp", ""), systems)
        for item in expansion.get("contains", []):
            index[(item.get("system"), item.get("code"))].add(oid)
    return index, meta


def provenance(sources: Sources, table: Table, all_vsac: Callable[[], set[str]], log) -> list[dict[str, str]]:
    codes = read_codes()
    named = {oid for *_, citation in codes for oid in OID.findall(citation)}
    try:  # every set of the package: a row that names none is placed by the sets that hold its code
        everything = all_vsac()
    except Unavailable as exc:
        print(f"only the value sets the rows name are read ({exc})", file=log)
        everything = named
    index, meta = vsac_index(sources, everything | named, log)
    atc = json.loads(sources.source("atc"))
    atc_codes = {}

    def walk(concepts: list[dict]) -> None:
        for concept in concepts:
            atc_codes[concept["code"]] = concept.get("display", "")
            walk(concept.get("concept", []))

    walk(atc.get("concept", []))
    out = []
    unplaced = []
    for system, code, file, citation in codes:
        rows = []
        held = index.get((system, code), set())
        wanted = set(OID.findall(citation)) & held or held
        for oid in sorted(wanted)[:4]:
            name, version, timestamp, systems = meta[oid]
            rows.append(("VSAC", f"{oid} {name} v{version}, expansion {timestamp[:10]} ({', '.join(systems)})"))
        if system == ATC and code in atc_codes:
            rows.append(("WHO-ATC", f"{code} {atc_codes[code]} (WHO ATC {atc.get('version')})"))
        if system == RXNORM and code in table.sources:
            rows.extend((key, table.names[code]) for key in sorted(table.sources[code]))
        if not rows:
            rows.append(("REF", citation))
            unplaced.append((file, system, code, citation))
        for key, detail in dict.fromkeys(rows):
            out.append({"system": system, "code": code, "file": file, "source": key, "detail": detail})
    for file, system, code, citation in unplaced:
        print(f"placed by its citation only: {file} {system} {code}: {citation[:90]}", file=log)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirrors", type=Path, help="a directory of git mirrors (owner+name/repo)")
    parser.add_argument("--offline", action="store_true", help="never use the network")
    parser.add_argument("--carry", action="store_true", help="carry a source that cannot be had from the table")
    args = parser.parse_args(argv)
    sources = Sources(args.mirrors, not args.offline)
    log = sys.stdout
    previous = rows_of("rxnorm_antiresorptives.csv")
    table = read_medication_lists(sources, args.carry, previous, log)
    written = write_table(table, DATA / "rxnorm_antiresorptives.csv")
    print(f"rxnorm_antiresorptives.csv: {len(written)} codes (was {len(previous)})", file=log)

    sandbox = sandbox_list(sources)
    with (ROOT / "tests" / "data" / "sandbox_medications.csv").open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["rxcui", "name", "prescribable", "ingredient"])
        for code, name, prescribable in sorted(sandbox, key=lambda s: (ingredient_of(s[1]) or "", s[1])):
            writer.writerow([code, name, "yes" if prescribable else "", ingredient_of(name)])
    print(f"tests/data/sandbox_medications.csv: {len(sandbox)} codes, {sum(p for *_, p in sandbox)} prescribable")

    def all_vsac() -> set[str]:
        repo, commit, _ = PINNED["vsac"]
        if args.mirrors is None:
            raise Unavailable("reading all of VSAC needs --mirrors (the package's file list)")
        git_dir = args.mirrors / repo.replace("/", "+") / "repo"
        listing = subprocess.run(
            ["git", "--git-dir", str(git_dir), "ls-tree", "--name-only", commit, "packages/us.nlm.vsac/package/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return {Path(p).name[len("ValueSet-") : -len(".json")] for p in listing if "/ValueSet-" in p}

    rows = provenance(sources, table, all_vsac, log)
    with (DATA / "provenance.csv").open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, ["system", "code", "file", "source", "detail"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"provenance.csv: {len(rows)} rows", file=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
