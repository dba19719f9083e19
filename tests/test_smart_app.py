"""The SMART companion app (issue 18): the pure chart-data builder, the SVG, and the EHR launch end to end against
a fake SMART EHR (tests/smart_ehr.py) in front of the real test FHIR server, in requests and in headless Chromium."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from werkzeug.serving import make_server

from service import loader
from service.app import create_app
from service.clinical.facts import Medication, Patient
from service.fhir.readers import Scope, read_lab_results, read_medications, read_patient
from service.hook_requests import NOW
from service.settings import ClinicalSettings, SettingsError, load_settings
from service.smart import chart, oauth, views
from service.smart import series as chart_series
from service.smart.chart import chart_spec, render_svg
from service.smart.series import build_series, limit_steps
from tests.conftest import CHROMIUM, FHIR_TOKEN, ROOT, free_port, launch_chromium
from tests.smart_ehr import CLIENT_ID, FakeEhr

DATA = ROOT / "tests" / "data" / "smart"
PATIENT = "smart-alp-history"
BUNDLE = json.loads((DATA / "alp-history.json").read_text())
ARTIFACTS = ROOT / "artifacts"
SETTINGS = ClinicalSettings()


def _series(bundle=BUNDLE, patient_id=PATIENT, settings=SETTINGS):
    patient = read_patient(bundle, patient_id, NOW)
    scope = Scope(patient=patient, now=NOW, settings=settings)
    labs = read_lab_results(bundle, scope=scope)
    return build_series(patient, labs, read_medications([bundle], scope), NOW, settings)


# ------------------------------------------------------------------------------------ the pure builder


def test_points_are_every_judged_alp_coloured_low_or_normal():
    series = _series()
    assert [(p.when.date().isoformat(), p.shown, p.low) for p in series.points][:3] == [
        ("2012-07-03", "180", False),
        ("2014-05-10", "118", True),
        ("2016-03-02", "125", True),
    ]
    assert len(series.points) == 10 and sum(not p.low for p in series.points) == 1
    # the unreadable one is listed with its reason, never plotted
    assert [(u.date, u.value) for u in series.unplotted] == [("2023-03-03", "see report")]
    assert "does not read as a number" in series.unplotted[0].reason
    # the lab's own range where it sent one, and the limit each point was judged against, in words
    ranged = [p for p in series.points if p.lab_low is not None]
    assert [(p.lab_low, p.lab_high) for p in ranged] == [(48, 130), (48, 130)]
    assert ranged[0].limits == "48-130 U/L (the lab's reference range)"
    assert series.points[1].limits.startswith("142-335 U/L (CALIPER")
    assert series.points[1].age == "5 y" and series.points[-1].age == "17 y"


def test_lower_limit_steps_follow_the_fallback_table_across_childhood():
    series = _series()  # a girl born 2009-04-12, results from age 3 to 17
    assert [(s.start.isoformat(), s.low) for s in series.steps] == [
        (series.start.isoformat(), 142),  # 1 to 10 years
        ("2019-04-12", 129),  # 10 to 13
        ("2022-04-12", 57),  # girls 13 to 15
        ("2024-04-12", 50),  # 15 to 17
        ("2026-04-12", 45),  # 17 to 19
    ]
    assert series.steps[-1].end == NOW.date()
    assert all(a.end == b.start for a, b in zip(series.steps, series.steps[1:], strict=False))


def test_steps_use_the_site_limit_from_adult_age_and_the_adult_limit_without_a_birth_date():
    settings = load_settings({"AUTH": "off", "ALP_SITE_LOW_LIMITS": "female=30,male=40"}, environ={}).clinical
    woman = Patient("w", birth_date=date(2005, 1, 20), gender="female")
    steps = limit_steps(woman, date(2022, 1, 1), date(2026, 6, 1), settings)
    assert [(s.start.isoformat(), s.low, s.label) for s in steps] == [
        ("2022-01-01", 50, "CALIPER interval for age and sex"),  # 16
        ("2022-01-20", 45, "CALIPER interval for age and sex"),  # 17
        ("2024-01-20", 30, "the site's lower limit"),  # 19: ADULT_AGE
    ]
    unknown = limit_steps(Patient("u"), date(2020, 1, 1), date(2026, 6, 1), SETTINGS)
    assert len(unknown) == 1 and unknown[0].low == 35 and "birth date unknown" in unknown[0].label


@pytest.mark.parametrize("birth", [date(2008, 2, 29), date(2010, 1, 31), date(2011, 8, 15)])
def test_each_step_starts_on_the_day_the_age_band_starts(birth):
    """The step dates are computed; the limit on each side of them is asked of the service's own fallback."""
    for months in (1, 12, 120, 156, 180, 204, 228):
        day = chart_series._add_months(birth, months)
        patient = Patient("p", birth_date=birth)
        assert patient.age_in("m", day) == months
        assert patient.age_in("m", day - timedelta(days=1)) == months - 1


def test_drug_periods_start_renewal_and_current():
    series = _series()
    (period,) = series.periods
    assert period.name == "alendronate" and period.ongoing and period.end == NOW
    assert [r.date().isoformat() for r in period.records] == ["2025-09-01", "2026-03-01"]
    stopped = chart_series.drug_periods(
        [
            Medication(
                frozenset({"bisphosphonate"}),
                "strong",
                "zoledronic acid",
                "history",
                start=datetime(2020, 1, 1, tzinfo=UTC),
                end=datetime(2021, 1, 1, tzinfo=UTC),
            ),
            Medication(frozenset({"denosumab"}), "strong", "denosumab", "history"),
            Medication(
                frozenset({"bisphosphonate"}), "strong", "alendronate", "draft", start=datetime(2026, 5, 1, tzinfo=UTC)
            ),
        ],
        NOW,
    )
    assert [(p.name, p.ongoing, p.end.year) for p in stopped[0]] == [("zoledronic acid", False, 2021)]
    assert stopped[1] == ["denosumab"]  # no date: listed, not drawn; a draft order is no period


def _alendronate(start, end=None, status="history"):
    day = lambda d: datetime.fromisoformat(d).replace(tzinfo=UTC) if d else None  # noqa: E731
    return Medication(
        frozenset({"bisphosphonate"}),
        "strong",
        "alendronate",
        status,
        start=day(start),
        end=day(end),
        ingredient="alendronate",
    )


def test_drug_holidays_are_gaps_between_courses():
    """Two completed courses and a current one are three periods (not one from 2016 to now), each with its stop."""
    records = [
        _alendronate("2016-01-01", "2016-07-01"),
        _alendronate("2017-02-01", "2017-05-01"),
        _alendronate("2017-05-01", "2017-09-01"),  # a renewal on the day the last order ended: the same course
        _alendronate("2017-06-01", "2017-08-01"),  # overlapping: the same course
        _alendronate("2025-09-01", status="current"),
    ]
    periods, _ = chart_series.drug_periods(records, NOW)
    assert [(p.start.date().isoformat(), p.end.date().isoformat(), p.ongoing) for p in periods] == [
        ("2016-01-01", "2016-07-01", False),
        ("2017-02-01", "2017-09-01", False),
        ("2025-09-01", NOW.date().isoformat(), True),
    ]
    assert [len(p.records) for p in periods] == [1, 3, 1]
    patient = Patient("p", birth_date=date(1950, 1, 1), gender="female")
    series = build_series(patient, [], records, NOW, SETTINGS)
    counts = _groups(render_svg(series))
    assert counts["drug_periods"] == 3
    assert counts["drug_records"] == 5 + 2  # every record, and a stop marker for each finished course


def test_workup_rows_carry_the_limit_each_was_judged_against():
    rows = {(w.display, w.date): w for w in _series().workup}
    plp = rows[("Pyridoxal 5'-phosphate (PLP)", "2026-05-02")]
    assert (plp.value, plp.judgement) == ("260", "high") and "ARUP" in plp.limits
    assert rows[("Zinc", "2025-06-10")].judgement == "low"
    assert rows[("Zinc", "2026-05-02")].judgement == "normal"
    assert {w.display for w in rows.values()} >= {"Zinc", "Magnesium", "TSH", "Total bilirubin"}


def test_no_results_gives_an_empty_series():
    patient = Patient("x", birth_date=date(1970, 1, 1), gender="male")
    series = build_series(patient, [], [], NOW, SETTINGS)
    assert series.points == () and series.periods == () and len(series.steps) == 1


def _obs(n, day, value, *, loinc="6768-6", unit="U/L", range_=None, flag=None, patient="p"):
    obs = {
        "resourceType": "Observation",
        "id": f"o{n}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": day,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }
    if range_:
        obs["referenceRange"] = [
            {"low": {"value": range_[0], "unit": unit}, "high": {"value": range_[1], "unit": unit}}
        ]
    if flag:
        code = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
        obs["interpretation"] = [{"coding": [{"system": code, "code": flag}]}]
    return obs


def _bundle(*observations, birth="1960-05-01", gender="female", patient="p"):
    entries = [{"resource": {"resourceType": "Patient", "id": patient, "birthDate": birth, "gender": gender}}]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries + [{"resource": o} for o in observations]}


def test_a_high_alp_is_drawn_and_listed_as_high():
    bundle = _bundle(
        _obs(1, "2025-01-10", 900, range_=(40, 129)),
        _obs(2, "2025-06-10", 700, flag="HH"),
        _obs(3, "2025-12-10", 80, range_=(40, 129)),
        _obs(4, "2026-03-10", 20, range_=(40, 129)),
    )
    series = _series(bundle, "p")
    assert [p.status for p in series.points] == ["high", "high", "normal", "low"]
    spec = json.dumps(chart_spec(series))
    assert '"status": "High"' in spec and "ALP 900 U/L, high against" in spec
    svg = render_svg(series)
    assert svg.count(chart.HIGH) >= 2  # orange points, not the blue of normal
    html = _page(series)
    rows = re.findall(r'<tr class="(\w+)">.*?<td class="judged">(\w+)', html, re.S)
    assert rows[-4:] == [("low", "low"), ("normal", "normal"), ("high", "high"), ("high", "high")]
    assert "High ALP</li>" in html


def test_a_sample_the_rules_set_aside_is_marked_with_the_reason():
    """EDTA: the cards say "recollect, possible EDTA contamination" and count the ALP as a single low; the page marks
    that point and row (and the zinc from the same draw) with the reason, from the rules' own Chart."""
    bundle = _bundle(
        _obs(1, "2026-02-10", 30, range_=(40, 129)),
        _obs(2, "2026-05-20T08:00:00Z", 28),
        _obs(3, "2026-05-20T08:00:00Z", 7.4, loinc="2823-3", unit="mmol/L"),
        _obs(4, "2026-05-20T08:00:00Z", 6.1, loinc="17861-6", unit="mg/dL", range_=(8.6, 10.2)),
        _obs(5, "2026-05-20T08:00:00Z", 12, loinc="5763-8", unit="ug/dL", range_=(60, 120)),
    )
    series = _series(bundle, "p")
    first, second = series.points
    assert first.set_aside is None and first.low
    assert second.low and "possible EDTA contamination" in second.set_aside and "7.4 mmol/L" in second.set_aside
    spec = chart_spec(series)
    shown = [d for layer in spec["layer"] if layer.get("name") == chart.POINTS for d in layer["data"]["values"]]
    assert [d["basis"] for d in shown] == [chart.JUDGED, chart.SET_ASIDE]
    html = _page(series)
    table = html[html.index('id="alp-table"') :]
    assert table.count("possible EDTA contamination") == 1 and table.count("(set aside)") == 1
    zinc = [w for w in series.workup if w.display.lower().startswith("zinc")]
    assert zinc and zinc[0].suspect and "same draw as a possibly contaminated ALP" in html


@pytest.mark.parametrize(
    ("days", "label"),
    [(150, r"[A-Z][a-z]{2} 2026"), (20, r"\d\d [A-Z][a-z]{2} 2026"), (800, r"[A-Z][a-z]{2} 202\d")],
)
def test_the_time_axis_has_dates_over_short_spans(days, label):
    """Results within one year once had no date on the axis (year ticks only)."""
    start = NOW - timedelta(days=days)
    bundle = _bundle(*(_obs(i, (start + timedelta(days=i * days // 4)).date().isoformat(), 80) for i in range(4)))
    svg = render_svg(_series(bundle, "p"))
    labels = re.findall(rf">({label})</text>", svg)
    assert len(labels) >= 3, labels
    long = render_svg(_series())
    assert len(re.findall(r">(20\d\d)</text>", long)) >= 8  # long spans keep their year ticks


def test_building_the_series_stays_linear(monkeypatch):
    """5000 ALP results once took 7.6 s: every result was looked for in the list of judged ones (a LabResult
    comparison each). Counted, not timed: comparisons and work stay proportional to the results."""
    from service.clinical.facts import LabResult

    compared = [0]
    real_eq = LabResult.__eq__

    def counting_eq(self, other):
        compared[0] += 1
        return real_eq(self, other)

    monkeypatch.setattr(LabResult, "__eq__", counting_eq)
    start = NOW - timedelta(days=3000)
    observations = [_obs(i, (start + timedelta(days=i // 2)).isoformat(), 30 + i % 90) for i in range(3000)]
    observations += [_obs(9000 + i, "2020-01-01", 80, unit="furlong") for i in range(50)]  # not usable: unplotted
    series = _series(_bundle(*observations), "p")
    assert len(series.points) == 3000 and len(series.unplotted) == 50
    assert compared[0] < 3000, compared[0]


def test_points_judged_by_the_lab_flag_are_marked():
    """ALP 200 flagged L is red far above the drawn lower limit: it is drawn as a diamond, "by the lab's flag"."""
    bundle = _bundle(
        _obs(1, "2025-10-01", 200, flag="L"),
        _obs(2, "2026-01-01", 20, flag="N"),
        _obs(3, "2026-03-01", 80),  # judged against the fallback interval: the line drawn
        _obs(4, "2026-04-01", 30, range_=(40, 129)),
    )
    series = _series(bundle, "p")
    assert [(p.status, p.by_flag) for p in series.points] == [
        ("low", True),
        ("normal", True),
        ("normal", False),
        ("low", False),
    ]
    spec = chart_spec(series)
    shown = [d for layer in spec["layer"] if layer.get("name") == chart.POINTS for d in layer["data"]["values"]]
    assert [d["basis"] for d in shown] == [chart.BY_FLAG, chart.BY_FLAG, chart.JUDGED, chart.JUDGED]
    assert "low by the lab's flag (not by the line drawn)" in shown[0]["what"]
    table = _page(series)
    table = table[table.index('id="alp-table"') :]
    assert table.count("(by the lab's flag)") == 2


def _page(series):
    """The page as the callback renders it, for a series."""
    from flask import render_template
    from markupsafe import Markup

    from tests.conftest import make_app

    app = make_app().client.application
    with app.test_request_context():
        return render_template(
            "smart_app.html",
            series=series,
            svg=Markup(render_svg(series)),
            cards=[],
            patient={"name": "N", "id": "p", "sex": "female", "age": "65 y", "birth_date": "1960-05-01"},
            today=NOW.date().isoformat(),
            steps_text=[],
            highlight=None,
        )


def _groups(svg: str) -> dict[str, int]:
    """Marks per named Vega group (``<name>_marks``) in the SVG."""
    counts = {}
    for element in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g"):
        match = re.search(r"\b(\w+)_marks\b", element.get("class", ""))
        if match:
            counts[match.group(1)] = len(list(element))
    return counts


def test_svg_has_a_mark_per_point_step_and_period():
    series = _series()
    counts = _groups(render_svg(series))
    assert counts["alp_points"] == 10
    assert counts["limit_steps"] == 5
    assert counts["lab_ranges"] == 2
    assert counts["drug_periods"] == 1
    assert counts["drug_records"] == 2  # start and one renewal (current: no stop marker)


def test_svg_fetches_nothing():
    svg = render_svg(_series())
    assert not re.search(r'(?:href|src)="(?:https?:)?//', svg)


# ------------------------------------------------------------------------------------ settings


def test_issuers_without_a_redirect_url_refuse_to_start():
    with pytest.raises(SettingsError, match="SMART_REDIRECT_URL"):
        create_app({"AUTH": "off", "SMART_ISSUERS": "https://ehr.example/fhir", "FEEDBACK_DB_URL": "sqlite://"})


def test_the_app_is_off_unless_issuers_are_allow_listed(client):
    assert client.client.get("/smart/launch?iss=x&launch=y").status_code == 404


def test_cards_link_to_the_app_when_it_is_on():
    from tests.conftest import OS, PV, load_request, make_app

    on = make_app(SMART_ISSUERS="https://ehr.example/fhir", PUBLIC_BASE_URL="https://cds.example.org")
    for service, fixture in ((PV, "persistent-low-in"), (OS, "order-low-alp-in")):
        cards = on.cards(service, load_request(fixture))  # valid against the response schema
        assert cards
        for card in cards:
            link = card["links"][-1]
            assert link["type"] == "smart" and link["label"] == "View ALP history"
            assert link["url"] == "https://cds.example.org/smart/launch"
            assert json.loads(link["appContext"])["highlight"]
    off = make_app().cards(PV, load_request("persistent-low-in"))
    assert not any(link["type"] == "smart" for card in off for link in card.get("links", []))
    # discovery and the integrator page describe it
    services = on.client.get("/cds-services").get_json()["services"]
    assert all("View ALP history" in s["description"] for s in services)
    page = on.client.get("/").get_data(as_text=True)
    assert 'id="smart-app"' in page and "https://cds.example.org/smart/launch" in page
    assert "https://cds.example.org/smart/callback" in page and "patient/Observation.rs" in page
    assert 'id="smart-app"' not in make_app().client.get("/").get_data(as_text=True)


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def ehr(fhir_base):
    loader.load_fixtures(fhir_base, FHIR_TOKEN, str(DATA))
    fake = FakeEhr(fhir_base, FHIR_TOKEN, PATIENT)
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def app_url(ehr, tmp_path_factory):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    app = create_app(
        {
            "NOW": lambda: NOW,
            "AUTH": "off",
            "LOG_LEVEL": "INFO",
            "FEEDBACK_DB_URL": "sqlite://",
            "PUBLIC_BASE_URL": base,
            "SMART_ISSUERS": [ehr.iss + "/"],  # a trailing slash in the setting or the iss changes nothing
            "SMART_CLIENT_ID": CLIENT_ID,
            "SMART_STATE_STORE_URL": f"sqlite:///{tmp_path_factory.mktemp('smart')}/launch.db",
        }
    )
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield base
    server.shutdown()


@pytest.fixture(autouse=True)
def _no_cached_discovery():
    """The SMART configuration is cached per iss: each test starts without it."""
    oauth.forget_discovery()
    yield
    oauth.forget_discovery()


def _launch(app_url, ehr, **mode):
    ehr.reset(**mode)
    oauth.forget_discovery()  # the EHR's mode may change its SMART configuration
    return requests.get(f"{app_url}/smart/launch", params={"iss": ehr.iss, "launch": "launch-123"}, timeout=30)


def _error(response, status):
    assert response.status_code == status, response.text[:500]
    html = response.text
    assert 'role="alert"' in html and f'data-status="{status}"' in html
    assert "<svg" not in html and PATIENT not in html and "2009-04-12" not in html
    return html


def test_launch_to_page(app_url, ehr, caplog):
    caplog.set_level(logging.DEBUG)
    response = _launch(app_url, ehr)
    assert response.status_code == 200, response.text[:500]
    # launch -> the EHR's authorize -> the callback: the PKCE verifier was checked by the token endpoint
    urls = [r.url for r in response.history] + [response.url]
    assert [urlsplit(u).path for u in urls] == ["/smart/launch", "/auth/authorize", "/smart/callback"]
    assert ehr.verified >= 1 and ehr.hits[0] == "/fhir/.well-known/smart-configuration"
    params = ehr.authorize_params
    assert params["scope"].split() == [
        "launch",
        "openid",
        "fhirUser",
        "patient/Observation.rs",
        "patient/MedicationRequest.rs",
        "patient/MedicationStatement.rs",
        "patient/Condition.rs",
        "patient/Patient.rs",
    ]
    assert params["aud"] == ehr.iss and params["launch"] == "launch-123"
    assert params["redirect_uri"] == f"{app_url}/smart/callback"
    html = response.text
    assert "Alkaline phosphatase history" in html and "Female, 17 y (born 2009-04-12)" in html
    counts = _groups(re.search(r"<svg.*?</svg>", html, re.S).group(0))
    assert counts["alp_points"] == 10 and counts["limit_steps"] == 5
    assert 'data-indicator="warning"' in html  # the antiresorptive card, carrying the workup (one card per problem)
    assert "hypophosphatasia" in html.lower()
    assert "see report" in html and "the lab&#39;s reference range" in html
    assert "Pyridoxal 5&#39;-phosphate (PLP)" in html and "ARUP interval" in html
    assert response.headers["Cache-Control"] == "no-store"
    # no token anywhere: not in a URL, not in the page, not in a log line; no patient data in the log
    assert ehr.secrets
    for secret in ehr.secrets:
        assert all(secret not in u for u in urls)
        assert secret not in html
        assert secret not in caplog.text
    # (the test servers' own request lines, werkzeug's, name the FHIR searches the fake EHR passed on)
    service_log = "\n".join(r.getMessage() for r in caplog.records if r.name != "werkzeug")
    assert PATIENT not in service_log and "2009-04-12" not in service_log
    assert '"event": "smart_page"' in caplog.text
    # the patient is named at the top: name, id and the date the data is as of
    top = html[html.index('id="patient"') : html.index("<h1>")]
    assert "Smart History Synthetic" in top and PATIENT in top and NOW.date().isoformat() in top
    # the callback cannot be replayed: the browser binding is cleared, and the state was used
    again = requests.get(response.url, timeout=30)
    assert "not started in this browser" in _error(again, 400)


def test_v1_scopes_when_the_ehr_offers_only_v1(app_url, ehr):
    response = _launch(app_url, ehr, v1=True)
    assert response.status_code == 200
    assert "patient/Observation.read" in ehr.authorize_params["scope"].split()
    assert not any(s.endswith(".rs") for s in ehr.authorize_params["scope"].split())


def test_iss_not_on_the_allow_list_is_refused_before_anything_is_sent(app_url, ehr):
    ehr.reset()
    for iss in ("http://127.0.0.1:9/fhir", ehr.iss + "x", f"{ehr.base}/other"):
        response = requests.get(
            f"{app_url}/smart/launch", params={"iss": iss, "launch": "l"}, allow_redirects=False, timeout=30
        )
        assert "allow-list" in _error(response, 403)
        assert "Location" not in response.headers
    assert ehr.hits == []


@pytest.mark.parametrize(
    ("path", "params", "why"),
    [
        ("/smart/launch", {"launch": "l"}, "no iss"),
        ("/smart/launch", {"iss": "x"}, "no launch"),
        ("/smart/launch", {"iss": "x" * 3000, "launch": "l"}, "not a value"),
        ("/smart/callback", {"code": "c"}, "no state"),
        ("/smart/callback", {"state": "made-up", "code": "c"}, "not started in this browser"),
        ("/smart/callback", {"state": "bad state\u00e9", "code": "c"}, "not a value"),
    ],
)
def test_bad_requests_are_clear_400s(app_url, path, params, why):
    response = requests.get(f"{app_url}{path}", params=params, allow_redirects=False, timeout=30)
    assert why in _error(response, 400)


def _to_callback(app_url, ehr, browser):
    """Launch in ``browser`` (a requests Session) up to the EHR's redirect back: the callback URL, not opened."""
    ehr.reset()
    oauth.forget_discovery()
    first = browser.get(
        f"{app_url}/smart/launch", params={"iss": ehr.iss, "launch": "l"}, allow_redirects=False, timeout=30
    )
    authorize = browser.get(first.headers["Location"], allow_redirects=False, timeout=30)
    return first, authorize.headers["Location"]


def test_wrong_state_is_refused_and_the_code_never_exchanged(app_url, ehr):
    browser = requests.Session()
    _, url = _to_callback(app_url, ehr, browser)
    callback = parse_qs(urlsplit(url).query)
    verified = ehr.verified
    forged = browser.get(
        f"{app_url}/smart/callback",
        params={"code": callback["code"][0], "state": "x" + callback["state"][0]},
        timeout=30,
    )
    assert "not started in this browser" in _error(forged, 400)
    # a made-up state that has the cookie of its name still finds no launch
    made_up = requests.get(
        f"{app_url}/smart/callback",
        params={"code": "c", "state": "made-up"},
        cookies={views.COOKIE_PREFIX + hashlib.sha256(b"made-up").hexdigest()[:16]: "v"},
        timeout=30,
    )
    assert "unknown, expired or already used" in _error(made_up, 400)
    assert ehr.verified == verified
    assert browser.get(url, timeout=30).status_code == 200  # the browser that launched still can


def test_the_launch_cookie_binds_the_callback_to_the_browser(app_url, ehr):
    """Login CSRF: a valid callback URL (code and state) opened in another browser shows nothing, and a browser
    with a forged cookie burns the launch, so a stolen authorization response cannot be redeemed."""
    browser = requests.Session()
    first, url = _to_callback(app_url, ehr, browser)
    cookie = first.headers["Set-Cookie"]
    assert cookie.startswith(views.COOKIE_PREFIX)
    attributes = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")}
    assert "httponly" in attributes and attributes["samesite"].strip() == "SameSite=Lax"
    assert attributes["path"].strip() == "Path=/smart" and "secure" not in attributes  # http test set-up
    verified = ehr.verified
    colleague = requests.get(url, timeout=30)  # the link sent to a colleague, or a stolen redirect
    assert "not started in this browser" in _error(colleague, 400)
    (name,) = browser.cookies.keys()
    attacker = requests.get(url, cookies={name: "guessed"}, timeout=30)
    assert "not started in this browser" in _error(attacker, 400)
    assert ehr.verified == verified  # no code was exchanged
    assert "already used" in _error(browser.get(url, timeout=30), 400)  # the forged try used the launch up
    # a good callback clears the cookie
    browser = requests.Session()
    _, url = _to_callback(app_url, ehr, browser)
    page = browser.get(url, timeout=30)
    assert page.status_code == 200 and not browser.cookies.keys()


def test_the_launch_cookie_is_secure_behind_https(monkeypatch):
    from tests.conftest import make_app

    monkeypatch.setattr(
        views.oauth,
        "discover",
        lambda iss, config: views.oauth.SmartConfiguration(
            "https://ehr.example/auth", "https://ehr.example/token", views.oauth.SCOPES_V2
        ),
    )
    app = make_app(
        SMART_ISSUERS="https://ehr.example/fhir",
        PUBLIC_BASE_URL="https://cds.example.org",
        SMART_STATE_STORE_URL="sqlite://",
    )
    response = app.client.get("/smart/launch?iss=https://ehr.example/fhir&launch=l")
    assert response.status_code == 302
    assert "; Secure" in response.headers["Set-Cookie"] and "HttpOnly" in response.headers["Set-Cookie"]
    # framed only by the allow-listed EHR by default
    assert "frame-ancestors https://ehr.example" in response.headers["Content-Security-Policy"]
    assert "X-Frame-Options" not in response.headers
    app = make_app(
        SMART_ISSUERS="https://ehr.example/fhir",
        PUBLIC_BASE_URL="https://cds.example.org",
        SMART_FRAME_ANCESTORS="none",
        SMART_STATE_STORE_URL="sqlite://",
    )
    response = app.client.get("/smart/launch?iss=https://ehr.example/fhir&launch=l")
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    for bad in ("https://ehr.example/path", "https://a.example; script-src *", "'none',https://a.example"):
        with pytest.raises(SettingsError, match="FRAME_ANCESTORS"):
            load_settings({"SMART_FRAME_ANCESTORS": bad}, environ={})


def test_the_ehr_refusing_authorisation(app_url, ehr):
    assert "did not authorise the app (access_denied)" in _error(_launch(app_url, ehr, deny=True), 403)


@pytest.mark.parametrize(
    ("mode", "status", "why"),
    [
        ({"token_error": True}, 400, "refused to give an access token (invalid_grant)"),
        ({"drop": ["access_token"]}, 502, "no usable access token"),
        ({"drop": ["patient"]}, 502, "no patient"),
        ({"fhir_refuses": True}, 502, "refused access (401)"),
        ({"extra": {"expires_in": [1]}}, 502, "token answer is not valid"),
        ({"extra": {"expires_at": [1]}}, 502, "token answer is not valid"),
        ({"extra": {"expires_in": {"a": 1}}}, 502, "token answer is not valid"),
        ({"extra": {"expires_in": 1e308 * 10}}, 502, "token"),
    ],
)
def test_token_and_fhir_failures_show_an_error_page_and_no_data(app_url, ehr, caplog, mode, status, why):
    caplog.set_level(logging.DEBUG)
    html = _error(_launch(app_url, ehr, **mode), status)
    assert why in html
    for secret in ehr.secrets:
        assert secret not in html and secret not in caplog.text


@pytest.mark.parametrize(
    ("name", "endpoint", "why"),
    [
        ("token_endpoint", "http://ehr.example.org/token", "not https"),  # code and verifier in clear
        ("token_endpoint", "https://169.254.169.254/latest/meta-data", "link-local or metadata"),
        ("authorization_endpoint", "http://[fe80::1]/auth", "link-local or metadata"),
        ("token_endpoint", "https://metadata.google.internal/token", "link-local or metadata"),
        ("authorization_endpoint", "https://user:pw@ehr.example.org/auth", "user information"),
        ("authorization_endpoint", "https://ehr.example.org/auth x", "spaces"),
        ("authorization_endpoint", "https://ehr.example.org/auth?state=evil", "OAuth parameters"),
        ("authorization_endpoint", "https://ehr.example.org/auth?x=1&redirect_uri=https://evil", "OAuth parameters"),
        ("authorization_endpoint", "https://ehr.example.org/auth?t=" + "a" * 2100, "longer than 2048"),
        ("authorization_endpoint", "javascript:alert(1)", "not an http(s) URL"),
    ],
)
def test_smart_configuration_endpoints_are_checked(app_url, ehr, name, endpoint, why):
    html = _error(_launch(app_url, ehr, config={name: endpoint}), 502)
    assert f"no usable {name}" in html and why in html
    assert ehr.hits == ["/fhir/.well-known/smart-configuration"]  # the browser was not sent anywhere


def test_endpoints_of_an_https_ehr_must_be_https_and_the_redirect_is_encoded():
    from service.smart import oauth

    with pytest.raises(oauth.LaunchError, match="not https"):
        oauth._endpoint({"token_endpoint": "http://127.0.0.1/token"}, "token_endpoint", "https://ehr.example/fhir")
    smart = oauth.SmartConfiguration("https://ehr.example/auth?tenant=a%20b", "https://ehr.example/t", oauth.SCOPES_V2)
    url = oauth.authorization_url(
        smart, "c", "https://cds/cb", "https://ehr.example/fhir", "x&state=evil", "s", "v" * 64
    )
    query = parse_qs(urlsplit(url).query)
    assert query["state"] == ["s"] and query["launch"] == ["x&state=evil"] and query["tenant"] == ["a b"]
    assert " " not in url and urlsplit(url).path == "/auth"


def test_link_local_addresses_are_never_connected_to():
    import time

    from service import outbound

    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/"):
        with pytest.raises(outbound.OutboundError):
            outbound.get(
                outbound.session(),
                url,
                deadline=time.monotonic() + 5,
                connect_timeout=5,
                read_timeout=5,
                max_bytes=1000,
            )
    assert outbound.forbidden_address("169.254.169.254") and outbound.forbidden_address("fd00:ec2::254")
    assert not outbound.forbidden_address("127.0.0.1") and not outbound.forbidden_address("10.0.0.1")


@pytest.mark.parametrize(
    "issuer",
    [
        "http://ehr.example.org/fhir",
        "https://user:pw@ehr.example.org/fhir",
        "https://ehr.example.org/fhir?tenant=1",
        "https://ehr.example.org/fhir#x",
        "https://169.254.169.254/fhir",
        "ehr.example.org/fhir",
    ],
)
def test_smart_issuers_are_checked_at_startup(issuer):
    with pytest.raises(SettingsError, match="SMART_ISSUERS"):
        load_settings({"SMART_ISSUERS": issuer}, environ={})
    assert load_settings({"SMART_ISSUERS": "http://127.0.0.1:8/fhir,https://e.example/fhir"}, environ={})


def test_the_smart_configuration_is_cached_per_iss(app_url, ehr, monkeypatch):
    """/smart/launch needs no authentication: launches within a few minutes cost the EHR one discovery request."""
    _launch(app_url, ehr)
    for _ in range(5):
        response = requests.get(
            f"{app_url}/smart/launch", params={"iss": ehr.iss, "launch": "l"}, allow_redirects=False, timeout=30
        )
        assert response.status_code == 302
    assert ehr.hits.count("/fhir/.well-known/smart-configuration") == 1
    monkeypatch.setattr(oauth, "DISCOVERY_SECONDS", 0.0)  # expired: read again
    oauth.forget_discovery()
    for _ in range(2):
        requests.get(
            f"{app_url}/smart/launch", params={"iss": ehr.iss, "launch": "l"}, allow_redirects=False, timeout=30
        )
    assert ehr.hits.count("/fhir/.well-known/smart-configuration") == 3


def test_pending_launches_are_capped_oldest_first():
    from service.smart.store import LaunchStore

    store = LaunchStore("sqlite://", max_pending=3)
    for i in range(6):
        store.put(f"s{i}", {"i": i}, 600 + i, client=f"c{i}")  # one launch per client: the oldest go first
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM smart_launches").scalar_one() == 3
    assert [store.take(f"s{i}") for i in range(6)] == [None, None, None, {"i": 3}, {"i": 4}, {"i": 5}]


@pytest.mark.parametrize("next_link", ["/steal", "/fhir-other/Observation", "/fhir/../steal", "/fhir/%2e%2e/steal"])
def test_the_token_never_leaves_the_fhir_base(app_url, ehr, next_link):
    html = _error(_launch(app_url, ehr, next_link=next_link), 502)
    assert "outside the FHIR base URL" in html
    assert not [h for h in ehr.hits if h == "/steal" or h.startswith("/fhir-other")]


def test_a_huge_token_answer_is_cut_off(app_url, ehr):
    """The token endpoint's answer is read up to 1 MiB (a 400 MB answer once took the process to 1.6 GB)."""
    size = 400 * 1024 * 1024
    html = _error(_launch(app_url, ehr, huge_token_answer=size), 502)
    assert "more than 1048576 bytes" in html
    assert ehr.sent < 64 * 1024 * 1024  # reading stopped early: the rest was never sent


def test_a_broken_launch_store_is_a_503_not_a_500(app_url, ehr, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from service.smart.store import LaunchStore

    def broken(*args, **kwargs):
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(LaunchStore, "put", broken)
    monkeypatch.setattr(LaunchStore, "take", broken)
    assert "try again" in _error(_launch(app_url, ehr), 503)
    cookie = {views.COOKIE_PREFIX + hashlib.sha256(b"s").hexdigest()[:16]: "v"}
    response = requests.get(f"{app_url}/smart/callback", params={"state": "s", "code": "c"}, cookies=cookie, timeout=30)
    assert "try again" in _error(response, 503)


def test_an_ehr_without_pkce_is_not_launched(app_url, ehr, monkeypatch):
    from service.smart import oauth

    real = oauth.outbound.get

    def without_s256(*args, **kwargs):
        answer = real(*args, **kwargs)
        body = json.loads(answer.body)
        body["code_challenge_methods_supported"] = ["plain"]
        return oauth.outbound.Answer(answer.status, answer.headers, json.dumps(body).encode())

    monkeypatch.setattr(oauth.outbound, "get", without_s256)
    assert "PKCE with S256" in _error(_launch(app_url, ehr), 502)
    assert "/auth/authorize" not in ehr.hits


def _chromium() -> None:
    import os
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is not installed: .ci/run must install it")
        pytest.skip("Chromium is not installed: apt-get install chromium (Debian)")


def test_launch_in_a_real_browser(app_url, ehr):
    """Chromium follows the EHR launch; the page shows the chart (no JavaScript needed) and the tables."""
    _chromium()
    from playwright.sync_api import sync_playwright

    # The card a clinician sees: a patient-view call for the patient, answered from the FHIR server.
    body = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": PATIENT},
        "fhirServer": ehr.fhir_base,
        "fhirAuthorization": {
            "access_token": FHIR_TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "alp-cds",
        },
    }
    cards = requests.post(f"{app_url}/cds-services/low-alp-workup", json=body, timeout=30).json()["cards"]
    link = cards[0]["links"][-1]
    assert link["type"] == "smart" and link["url"] == f"{app_url}/smart/launch"
    ehr.reset(app_context=link["appContext"])  # the EHR passes the link's appContext on with the token
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        context = browser.new_context(viewport={"width": 1100, "height": 900}, java_script_enabled=False)
        page = context.new_page()
        seen = []
        page.on("request", lambda r: seen.append(r.url))
        page.goto(f"{link['url']}?iss={ehr.iss}&launch=browser-launch")  # the EHR launches the link
        assert urlsplit(page.url).path == "/smart/callback"
        assert page.locator("h1").inner_text() == "Alkaline phosphatase history"
        assert page.locator("svg g.alp_points_marks > *").count() == 10
        assert page.locator("svg g.limit_steps_marks > *").count() == 5
        assert page.locator("table.alp tbody tr").count() == 11  # 10 judged and one not used
        assert page.locator("article.card").count() == len(cards)
        highlighted = page.locator("article.card.highlight")
        assert highlighted.count() == 1
        assert highlighted.get_attribute("data-kind") == json.loads(link["appContext"])["highlight"]
        assert storage_is_empty(context)
        page.screenshot(path=str(ARTIFACTS / "smart-app.png"), full_page=True)
        # the top of the page (the README's picture, docs/smart-app.png, is a copy of it)
        page.screenshot(path=str(ARTIFACTS / "smart-app-top.png"), clip={"x": 0, "y": 0, "width": 1100, "height": 700})
        browser.close()
    origins = {f"{urlsplit(u).scheme}://{urlsplit(u).netloc}" for u in seen}
    assert origins <= {app_url, ehr.base}  # nothing third-party
    for secret in ehr.secrets:
        assert all(secret not in u for u in seen)
    assert (ARTIFACTS / "smart-app.png").stat().st_size > 20_000


def storage_is_empty(context) -> bool:
    """No cookie and no web storage: the token never reaches the browser."""
    state = context.storage_state()
    return state["cookies"] == [] and all(not o.get("localStorage") for o in state["origins"])


# ---------------------------------------------------------------- data that could not be read is never "none"

SMART_BASE = "https://ehr.example.org/fhir"


def _page_text_with_failing(failing: str) -> str:
    """The SMART page for a patient on alendronate whose ``failing`` search answers 503 (an outside review found the
    page saying "None on record" for data it never read)."""
    import responses
    from flask import render_template

    from tests.conftest import load_request

    app = create_app(
        {
            "NOW": lambda: NOW,
            "AUTH": "off",
            "FEEDBACK_DB_URL": "sqlite://",
            "SMART_ISSUERS": SMART_BASE,
            "PUBLIC_BASE_URL": "https://cds.example.org",
            "SMART_STATE_STORE_URL": "sqlite://",
        }
    )
    prefetch = load_request("antiresorptive-current-in")["prefetch"]
    empty = {"resourceType": "Bundle", "type": "searchset"}

    def answer(request):
        url = request.url
        key = (
            "medicationStatements"
            if "MedicationStatement" in url
            else "medicationRequests"
            if "MedicationRequest" in url
            else "alp"
            if "6768-6" in url
            else "labs"
        )
        if key in failing or "page=2" in url:
            return 503, {}, json.dumps({"resourceType": "OperationOutcome", "issue": []})
        body = prefetch.get(key) or empty
        if key == "alp" and "alp_pages" in failing:  # a second page of ALP results that cannot be read
            body = {**body, "link": [{"relation": "next", "url": f"{SMART_BASE}/Observation?page=2"}]}
        return 200, {}, json.dumps(body)

    with app.test_request_context("/smart/callback"), responses.RequestsMock() as rsps:
        rsps.add(responses.GET, f"{SMART_BASE}/Patient/antiresorptive-current-in", json=prefetch["patient"])
        rsps.add_callback(responses.GET, re.compile(SMART_BASE + r"/(Observation|Medication).*"), callback=answer)
        page = views.chart_page(SMART_BASE, "token", "antiresorptive-current-in", app.config["CDS"])
        html = render_template("smart_app.html", **page)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.mark.parametrize(
    ("failing", "said", "never"),
    [
        (("labs",), "Other lab results could not be read from the EHR", "No zinc, magnesium, TSH"),
        (
            ("medicationStatements", "medicationRequests"),
            "Medication records could not be read from the EHR: no treatment period is shown",
            "None on record",
        ),
        (("medicationStatements",), "Some medication records could not be read from the EHR", "None on record."),
        (
            ("alp_pages",),
            "Not every ALP result could be read from the EHR: the history, and possibly the latest result, may",
            "None on record.",
        ),
    ],
)
def test_the_smart_page_says_what_it_could_not_read_and_never_none_on_record(failing, said, never):
    text = _page_text_with_failing(failing)
    assert said in text and never not in text


def test_the_smart_page_with_everything_read_names_no_missing_data():
    text = _page_text_with_failing(())
    assert "could not be read from the EHR" not in text and "alendronate" in text
