"""The peer of ``bench/peer.py``: the low-ALP rule written as a HealthChain user would write it.

Runs only in the bench's own HealthChain virtualenv (``bench/peer.py`` makes it; HealthChain is never a dependency
of the project) and imports nothing of ``service``. The shape follows HealthChain's documentation: a
``HealthChainAPI`` (FastAPI), a ``CDSHooksService`` with one ``@cds.hook("patient-view", ...)`` handler that gets a
validated ``CDSRequest`` (pydantic) and returns a ``CDSResponse`` of ``Card`` models. The handler reads the same
prefetch keys as the service (``alp``, ``labs``: searchset Bundles as plain dicts, which is how ``CDSRequest``
carries them) and applies the same core rule, simplified as a user would write it:

- the ALP results (LOINC 6768-6 and the other total ALP codes), in U/L, newest first;
- a result is low when its value is under its reference range's low bound, else under 40 U/L;
- the run of lows from the newest back; each low is checked for EDTA contamination against the potassium,
  calcium, zinc and magnesium of the same day in ``labs`` (potassium above 6.0 mmol/L, calcium under 8.0 mg/dL or
  2.0 mmol/L, zinc under 60 ug/dL, magnesium under 1.6 mg/dL);
- a warning card when the run has two uncontaminated lows (persistently low), an info card for one.

So it reads every ALP result and every lab of those days, as the service does, but none of the service's other
work (patient identity, units, age bands, medications, conditions, cards with suggestions).

With ``PEER_TYPED=1`` the handler first turns the prefetch into FHIR models with HealthChain's own helper
(``healthchain.fhir.convert_prefetch_to_fhir_objects``: ``fhir.resources`` R4B, pydantic-validated), the "type-safe
FHIR" its documentation leads with, and reads those (``bench/peer.py`` serves both, as ``healthchain`` and
``healthchain-typed``).
"""

from __future__ import annotations

import os
from typing import Any

from healthchain.fhir import convert_prefetch_to_fhir_objects
from healthchain.gateway import CDSHooksService, HealthChainAPI
from healthchain.models.requests.cdsrequest import CDSRequest
from healthchain.models.responses.cdsresponse import Card, CDSResponse

LOINC = "http://loinc.org"
ALP_CODES = {"6768-6", "77141-0", "1783-0", "1777-2", "17838-4"}
CONTAMINATION = {  # LOINC: (unit, test) -- a value that points to an EDTA tube
    "2823-3": ("mmol/L", lambda v: v > 6.0),  # potassium
    "6298-4": ("mmol/L", lambda v: v > 6.0),
    "17861-6": ("mg/dL", lambda v: v < 8.0),  # calcium
    "2000-8": ("mmol/L", lambda v: v < 2.0),
    "5763-8": ("ug/dL", lambda v: v < 60),  # zinc
    "19123-9": ("mg/dL", lambda v: v < 1.6),  # magnesium
}
DEFAULT_LOW = 40.0

cds = CDSHooksService()


TYPED = os.environ.get("PEER_TYPED") == "1"
Row = tuple[str | None, str | None, str, float | None, str | None, float | None]  # code status when value unit low


def _rows(bundle: Any) -> list[Row]:
    """(LOINC code, status, effective time as text, value, UCUM code, reference-range low) of each Observation."""
    if TYPED:
        return [_typed_row(e.resource) for e in getattr(bundle, "entry", None) or [] if e.resource is not None]
    if not isinstance(bundle, dict):
        return []
    return [_row(e["resource"]) for e in bundle.get("entry") or [] if isinstance(e, dict) and "resource" in e]


def _row(observation: dict[str, Any]) -> Row:
    code = next(
        (c.get("code") for c in (observation.get("code") or {}).get("coding") or [] if c.get("system") == LOINC),
        None,
    )
    quantity = observation.get("valueQuantity") or {}
    value = quantity.get("value")
    low = None
    for reference in observation.get("referenceRange") or []:
        bound = (reference.get("low") or {}).get("value")
        if isinstance(bound, int | float):
            low = float(bound)
    when = observation.get("effectiveDateTime") or ""
    number = float(value) if isinstance(value, int | float) else None
    return code, observation.get("status"), when, number, quantity.get("code"), low


def _typed_row(observation: Any) -> Row:
    code = next((c.code for c in (observation.code.coding or []) if c.system == LOINC), None)
    quantity = getattr(observation, "valueQuantity", None)
    low = None
    for reference in getattr(observation, "referenceRange", None) or []:
        if reference.low is not None and reference.low.value is not None:
            low = float(reference.low.value)
    when = getattr(observation, "effectiveDateTime", None)
    value = float(quantity.value) if quantity is not None and quantity.value is not None else None
    unit = quantity.code if quantity is not None else None
    return code, observation.status, when.isoformat() if when is not None else "", value, unit, low


@cds.hook("patient-view", id="low-alp-workup", title="Low ALP")
def low_alp(request: CDSRequest) -> CDSResponse:
    prefetch = request.prefetch or {}
    if TYPED:
        prefetch = convert_prefetch_to_fhir_objects({k: v for k, v in prefetch.items() if k in ("alp", "labs") and v})
    results = []
    for code, status, when, value, unit, low in _rows(prefetch.get("alp")):
        if status not in ("final", "amended", "corrected") or code not in ALP_CODES:
            continue
        if value is None or unit != "U/L":
            continue
        results.append((when, value, low if low is not None else DEFAULT_LOW))
    results.sort(reverse=True)
    if not results or results[0][1] >= results[0][2]:
        return CDSResponse(cards=[])

    labs_by_day: dict[str, list[Row]] = {}
    for row in _rows(prefetch.get("labs")):
        if row[0] in CONTAMINATION:
            labs_by_day.setdefault(row[2][:10], []).append(row)

    lows, contaminated = [], 0
    for when, value, low in results:
        if value >= low:
            break
        suspect = False
        for code, _, _, lab_value, lab_unit, _ in labs_by_day.get(when[:10], []):
            unit, test = CONTAMINATION[code]
            if lab_value is not None and lab_unit == unit and test(lab_value):
                suspect = True
        if suspect:
            contaminated += 1
        else:
            lows.append((when, value))
    if not lows:
        return CDSResponse(cards=[])
    persistent = len(lows) >= 2
    rows = "\n".join(f"| {when[:10]} | {value:g} U/L |" for when, value in lows[:12])
    summary = "Persistently low alkaline phosphatase: consider a workup" if persistent else "Low alkaline phosphatase"
    card = Card(
        summary=summary,
        indicator="warning" if persistent else "info",
        source={"label": "Low ALP rule (bench peer)"},
        detail=f"{len(lows)} low results ({contaminated} possibly contaminated left out).\n\n"
        f"| date | ALP |\n|---|---|\n{rows}",
    )
    return CDSResponse(cards=[card])


app = HealthChainAPI(title="low-ALP peer")
app.register_service(cds)
