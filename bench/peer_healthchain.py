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
"""

from __future__ import annotations

from typing import Any

from healthchain.gateway import CDSHooksService, HealthChainAPI
from healthchain.models.requests.cdsrequest import CDSRequest
from healthchain.models.responses.cdsresponse import Card, CDSResponse

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


def _entries(bundle: Any) -> list[dict[str, Any]]:
    if not isinstance(bundle, dict):
        return []
    return [e["resource"] for e in bundle.get("entry") or [] if isinstance(e, dict) and "resource" in e]


def _code(observation: dict[str, Any]) -> str | None:
    for coding in (observation.get("code") or {}).get("coding") or []:
        if coding.get("system") == "http://loinc.org":
            return coding.get("code")
    return None


def _quantity(observation: dict[str, Any]) -> float | None:
    quantity = observation.get("valueQuantity") or {}
    value = quantity.get("value")
    return float(value) if isinstance(value, int | float) else None


@cds.hook("patient-view", id="low-alp-workup", title="Low ALP")
def low_alp(request: CDSRequest) -> CDSResponse:
    prefetch = request.prefetch or {}
    results = []
    for observation in _entries(prefetch.get("alp")):
        if observation.get("status") not in ("final", "amended", "corrected") or _code(observation) not in ALP_CODES:
            continue
        value = _quantity(observation)
        unit = (observation.get("valueQuantity") or {}).get("code")
        if value is None or unit != "U/L":
            continue
        low = DEFAULT_LOW
        for reference in observation.get("referenceRange") or []:
            bound = (reference.get("low") or {}).get("value")
            if isinstance(bound, int | float):
                low = float(bound)
        results.append((observation.get("effectiveDateTime") or "", value, low))
    results.sort(reverse=True)
    if not results or results[0][1] >= results[0][2]:
        return CDSResponse(cards=[])

    labs_by_day: dict[str, list[dict[str, Any]]] = {}
    for observation in _entries(prefetch.get("labs")):
        if _code(observation) in CONTAMINATION:
            labs_by_day.setdefault((observation.get("effectiveDateTime") or "")[:10], []).append(observation)

    lows, contaminated = [], 0
    for when, value, low in results:
        if value >= low:
            break
        suspect = False
        for lab in labs_by_day.get(when[:10], []):
            unit, test = CONTAMINATION[_code(lab)]
            lab_value = _quantity(lab)
            if lab_value is not None and (lab.get("valueQuantity") or {}).get("code") == unit and test(lab_value):
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
