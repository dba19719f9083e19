"""The settings object: one frozen, typed declaration per setting; unknown names refused; the clinical rules see
only the narrow view they use."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from types import MappingProxyType

import pytest

from service.settings import (
    ALP_SITE_LIMIT_RANGE,
    ENV_PREFIX,
    SERVICE_LINK,
    SETTINGS,
    ClinicalSettings,
    Settings,
    SettingsError,
    load_settings,
    setting_names,
)
from tests.conftest import OS, PV, ROOT

CLINICAL = ROOT / "service" / "clinical"


@pytest.mark.parametrize(
    ("overrides", "environ", "message"),
    [
        ({"ADULT_AEG": 18}, {}, "ADULT_AEG is not a setting of this service; did you mean ADULT_AGE?"),
        ({"NOW": None, "RECENT_RESULTS_DAYS": 30}, {}, "; did you mean RECENT_RESULT_DAYS?"),
        (
            {},
            {"CDS_FHIR_TIME_BUDGT": "5"},
            "CDS_FHIR_TIME_BUDGT is not a setting of this service; did you mean CDS_FHIR_TIME_BUDGET?",
        ),
        ({"alp_current_days": 30}, {}, "alp_current_days is not a setting of this service"),  # names are upper case
    ],
)
def test_an_unknown_name_is_refused_with_the_closest_setting(overrides, environ, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(overrides, environ=environ)
    if overrides:
        with pytest.raises(TypeError):
            Settings(**overrides)  # nor can code build the object with a name that is no field


def test_the_settings_are_the_fields_of_one_frozen_class():
    settings = load_settings({"AUTH": "off"}, environ={})
    assert isinstance(settings, Settings) and settings.AUTH is False
    assert setting_names() == [f.name for f in dataclasses.fields(Settings) if f.name != "NOW"]
    for setting in SETTINGS:
        declared = Settings.__dataclass_fields__[setting.name]
        assert setting.doc == declared.metadata["doc"] and setting.parse is declared.metadata["parse"]
        assert getattr(Settings(), setting.name) == setting.default
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.AUTH = True  # type: ignore[misc]
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
        settings.WILSON_MAX_AEG = 40  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.clinical.ADULT_AGE = 18  # type: ignore[misc]
    assert not hasattr(settings, "__getitem__")  # attributes, typed: no reading by string key


def test_values_and_defaults_are_read_only_and_never_shared_between_loads():
    limits = {"female": 35}
    issuers = {"https://iss.example": {"jwks_url": "https://iss.example/jwks", "fhir_servers": ["https://f/"]}}
    first = load_settings(
        {"ALP_SITE_LOW_LIMITS": limits, "TRUSTED_ISSUERS": issuers, "CORS_ORIGINS": ["https://a.example"]}, environ={}
    )
    limits["female"] = 99  # the caller's mappings are copied, not kept
    issuers["https://iss.example"]["fhir_servers"].append("https://g")
    assert first.ALP_SITE_LOW_LIMITS == {"female": 35.0}
    assert first.TRUSTED_ISSUERS["https://iss.example"]["fhir_servers"] == ("https://f",)
    with pytest.raises(TypeError):
        first.ALP_SITE_LOW_LIMITS["female"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        first.TRUSTED_ISSUERS["https://iss.example"]["tenant"] = "x"  # type: ignore[index]
    with pytest.raises(AttributeError):
        first.CORS_ORIGINS.append("https://b.example")  # type: ignore[attr-defined]

    one, other = load_settings({}, environ={}), load_settings({}, environ={})
    for setting in SETTINGS:
        default = getattr(one, setting.name)
        assert isinstance(default, str | int | float | tuple | MappingProxyType), setting.name
        assert default == getattr(other, setting.name) == setting.default
        if isinstance(default, MappingProxyType):
            assert default is not getattr(other, setting.name), setting.name
            with pytest.raises(TypeError):
                default["male"] = 1  # type: ignore[index]
    assert one.ALP_SITE_LOW_LIMITS == {} and one.TRUSTED_ISSUERS == {}


def test_the_clock_is_injectable_and_no_setting():
    clock = load_settings({"NOW": lambda: "then"}, environ={}).NOW
    assert clock() == "then" and "NOW" not in setting_names()
    assert load_settings({}, environ={}).NOW().tzinfo is not None


def _setting_reads(source: str) -> set[str]:
    """The names of settings a module reads as attributes (``x.ALP_CURRENT_DAYS``)."""
    return set(re.findall(r"\.([A-Z][A-Z0-9_]*)\b", source)) & set(setting_names())


def test_the_clinical_view_has_exactly_the_settings_the_clinical_rules_read():
    read = set().union(*(_setting_reads(path.read_text()) for path in CLINICAL.glob("*.py")))
    view = {f.name for f in dataclasses.fields(ClinicalSettings)}
    assert read == view, "service/clinical reads settings outside ClinicalSettings, or the view has unused ones"
    settings = load_settings({"ADULT_AGE": "18", "ALP_SITE_LOW_LIMITS": "40"}, environ={})
    assert settings.clinical == ClinicalSettings(**{name: getattr(settings, name) for name in view})
    assert settings.clinical.ADULT_AGE == 18 and settings.clinical.ALP_SITE_LOW_LIMITS == {"male": 40, "female": 40}
    assert ClinicalSettings() == load_settings({}, environ={}).clinical  # the same defaults, declared once
    for name in view:  # the same types
        assert ClinicalSettings.__annotations__[name] == Settings.__annotations__[name], name


def test_the_clinical_code_takes_only_the_clinical_view():
    for path in CLINICAL.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "service.settings":
                assert [a.name for a in node.names] == ["ClinicalSettings"], path.name
            arguments = node.args.args + node.args.kwonlyargs if isinstance(node, ast.FunctionDef) else []
            fields = [n for n in node.body if isinstance(n, ast.AnnAssign)] if isinstance(node, ast.ClassDef) else []
            for name, annotation in [(a.arg, a.annotation) for a in arguments] + [
                (f.target.id, f.annotation) for f in fields if isinstance(f.target, ast.Name)
            ]:
                if name == "settings":
                    assert ast.unparse(annotation) == "ClinicalSettings", f"{path.name}: {name}"


@pytest.mark.parametrize(("service_id", "fixture"), [(PV, "edta-in"), (OS, "order-low-alp-in")])
def test_a_hook_call_hands_the_rules_the_clinical_view(monkeypatch, client, service_id, fixture):
    from service.hooks import patient_chart

    given = []
    chart = patient_chart.Chart

    def spy(**kwargs):
        given.append(kwargs["settings"])
        return chart(**kwargs)

    monkeypatch.setattr(patient_chart, "Chart", spy)
    assert client.cards(service_id, json.loads((ROOT / "fixtures" / "requests" / f"{fixture}.json").read_text()))
    assert given and all(type(settings) is ClinicalSettings for settings in given)


# ------------------------------------------------------------------------------- names: hints, Kubernetes links


@pytest.mark.parametrize("name", ["CDS_TRUSTED_ISSUERS", "CDS_TRUSTED_ISSUERS_FIEL", "CDS_TRUSTED_ISSUER_FILE"])
def test_the_hint_for_a_misspelt_trust_file_variable_names_the_variable_that_exists(name, tmp_path):
    with pytest.raises(SettingsError) as raised:
        load_settings(environ={name: "trust.yaml"})
    assert str(raised.value).startswith(
        f"{name} is not a setting of this service; did you mean CDS_TRUSTED_ISSUERS_FILE?"
    )
    trust = tmp_path / "trust.yaml"  # the variable hinted at is one the service reads
    trust.write_text("https://iss.example: {jwks_url: https://iss.example/jwks}\n")
    assert load_settings(environ={"CDS_TRUSTED_ISSUERS_FILE": str(trust)}).TRUSTED_ISSUERS
    # as an override, the setting's own name is the one to use
    with pytest.raises(
        SettingsError,
        match=re.escape("TRUSTED_ISSUERS_FILE is not a setting of this service; did you mean TRUSTED_ISSUERS?"),
    ):
        load_settings({"TRUSTED_ISSUERS_FILE": str(trust)}, environ={})


def test_every_hint_names_a_variable_the_service_reads():
    env_names = {setting.env_name for setting in SETTINGS}
    for setting in SETTINGS:
        for typo in (setting.env_name + "X", setting.env_name[:-1], ENV_PREFIX + setting.name + "S"):
            if typo in env_names:
                continue
            with pytest.raises(SettingsError) as raised:
                load_settings(environ={typo: "1"})
            hint = re.search(r"did you mean (\S+)\?", str(raised.value))
            assert hint and hint.group(1) in env_names, (typo, str(raised.value))


KUBERNETES_LINKS = {  # what a pod gets for Services named cds (port 8080, named http) and cds-redis (6379)
    "CDS_SERVICE_HOST": "10.0.0.1",
    "CDS_SERVICE_PORT": "8080",
    "CDS_SERVICE_PORT_HTTP": "8080",
    "CDS_PORT": "tcp://10.0.0.1:8080",
    "CDS_PORT_8080_TCP": "tcp://10.0.0.1:8080",
    "CDS_PORT_8080_TCP_PROTO": "tcp",
    "CDS_PORT_8080_TCP_PORT": "8080",
    "CDS_PORT_8080_TCP_ADDR": "10.0.0.1",
    "CDS_REDIS_SERVICE_HOST": "10.0.0.2",
    "CDS_REDIS_SERVICE_PORT": "6379",
    "CDS_REDIS_PORT": "tcp://10.0.0.2:6379",
    "CDS_REDIS_PORT_6379_TCP": "tcp://10.0.0.2:6379",
    "CDS_REDIS_PORT_6379_TCP_PROTO": "tcp",
    "CDS_REDIS_PORT_6379_TCP_PORT": "6379",
    "CDS_REDIS_PORT_6379_TCP_ADDR": "10.0.0.2",
    "CDS_DNS_PORT_53_UDP_ADDR": "10.0.0.3",
    "CDS_SCTP_PORT_9_SCTP": "sctp://10.0.0.4:9",
}


def test_kubernetes_service_link_variables_do_not_stop_the_start():
    settings = load_settings(environ={**KUBERNETES_LINKS, "CDS_REDIS_URL": "redis://cds-redis:6379/0"})
    assert settings.REDIS_URL == "redis://cds-redis:6379/0"  # the settings beside them are read as ever
    for name in ("CDS_REDIS_PORTS", "CDS_PORT_8080_HTTP", "CDS_REDIS_HOST", "CDS_SERVICE_HOSTS"):  # not their shape
        with pytest.raises(SettingsError, match=f"^{name} is not a setting"):
            load_settings(environ={**KUBERNETES_LINKS, name: "1"})
    with pytest.raises(SettingsError, match=r"^CDS_REDIS_PORT is not a setting"):  # as an override: no Kubernetes
        load_settings({"CDS_REDIS_PORT": "1"}, environ={})
    assert not [s.env_name for s in SETTINGS if SERVICE_LINK.fullmatch(s.env_name)]  # a setting would still be read


# ------------------------------------------------------------------------------------------- nonsense values


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CDS_FHIR_TIME_BUDGET": "1e300"}, "FHIR_TIME_BUDGET"),  # OverflowError in the watchdog's timer
        ({"CDS_FHIR_TIME_BUDGET": "inf"}, "FHIR_TIME_BUDGET"),  # the watchdog's thread died
        ({"CDS_FHIR_TIME_BUDGET": "nan"}, "FHIR_TIME_BUDGET"),
        ({"CDS_FHIR_TIME_BUDGET": "86401"}, "FHIR_TIME_BUDGET"),  # more than a day
        ({"CDS_MIGRATE_TIMEOUT": "1e9"}, "MIGRATE_TIMEOUT"),
        ({"CDS_CLIENT_TIMEOUT": "-inf"}, "CLIENT_TIMEOUT"),
        ({"CDS_LOG_LEVEL": "VERBOSE"}, "LOG_LEVEL"),  # was a bare ValueError in create_app
        ({"CDS_WILSON_MIN_AGE": "60", "CDS_WILSON_MAX_AGE": "3"}, "WILSON_MIN_AGE"),  # no Wilson check, silently
        ({"CDS_WILSON_MIN_AGE": "55"}, "WILSON_MAX_AGE"),  # equal: no age gets it either
        ({"CDS_ALP_SITE_LOW_LIMITS": "inf"}, "ALP_SITE_LOW_LIMITS"),  # every ALP low, "lower limit inf"
        ({"CDS_ALP_SITE_LOW_LIMITS": "1e308"}, "ALP_SITE_LOW_LIMITS"),
        ({"CDS_ALP_SITE_LOW_LIMITS": "female=35,male=400"}, "ALP_SITE_LOW_LIMITS"),  # no lower limit
        ({"CDS_ALP_SITE_LOW_LIMITS": "0.58"}, "ALP_SITE_LOW_LIMITS"),  # ukat/L: nothing would be low
        ({"CDS_ALP_SITE_LOW_LIMITS": "female=nan"}, "ALP_SITE_LOW_LIMITS"),
        ({"CDS_ADULT_AGE": "2.9"}, "ADULT_AGE"),  # was 2
        ({"CDS_ADULT_AGE": "1000"}, "ADULT_AGE"),  # past any date a chart holds
        ({"CDS_ALP_CURRENT_DAYS": "1000000000"}, "ALP_CURRENT_DAYS"),  # timedelta overflow on every call
        ({"CDS_JWT_LEEWAY": "1e3"}, "JWT_LEEWAY"),
        ({"CDS_SMART_LAUNCH_SECONDS": "99999999999"}, "SMART_LAUNCH_SECONDS"),
    ],
)
def test_nonsense_values_are_refused_at_start_with_a_settings_error_naming_the_setting(environ, named):
    with pytest.raises(SettingsError) as raised:
        load_settings(environ=environ)
    assert f"{named} (CDS_{named})" in str(raised.value)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"ADULT_AGE": 2.9}, "ADULT_AGE"),
        ({"ADULT_AGE": True}, "ADULT_AGE"),  # was 1
        ({"FHIR_MAX_PAGES": False}, "FHIR_MAX_PAGES"),
        ({"FHIR_CALLS_PER_WORKER": 0.5}, "FHIR_CALLS_PER_WORKER"),
        ({"FHIR_TIME_BUDGET": True}, "FHIR_TIME_BUDGET"),
        ({"FHIR_TIME_BUDGET": 10**400}, "FHIR_TIME_BUDGET"),  # beyond a double
        ({"FHIR_READ_TIMEOUT": float("nan")}, "FHIR_READ_TIMEOUT"),
        ({"CORS_ORIGINS": {"https://a.example": True}}, "CORS_ORIGINS"),  # was "{'https://a.example': True}"
        ({"FHIR_SERVERS": {"https://f.example"}}, "FHIR_SERVERS"),  # a set has no order
        ({"ALP_SITE_LOW_LIMITS": {"female": float("inf")}}, "ALP_SITE_LOW_LIMITS"),
        ({"ALP_SITE_LOW_LIMITS": {"male": True}}, "ALP_SITE_LOW_LIMITS"),
    ],
)
def test_nonsense_overrides_are_refused_with_a_settings_error_naming_the_setting(overrides, named):
    with pytest.raises(SettingsError, match=re.escape(f"setting {named} (CDS_{named})")):
        load_settings(overrides, environ={})


def test_every_number_setting_is_finite_and_every_whole_number_whole():
    """The general rule, for every number setting: no infinity, no NaN, no boolean; a whole number is whole; a float
    setting is seconds, at most a day, or a share of a budget (FHIR_OPTIONAL_SHARE), more than 0 and less than 1."""
    numbers = [s for s in SETTINGS if type(s.default) in (int, float)]
    assert {s.name for s in numbers if type(s.default) is float} >= {"FHIR_TIME_BUDGET", "MIGRATE_TIMEOUT"}

    def refused(setting, value):
        with pytest.raises(SettingsError, match=re.escape(f"setting {setting.name} ({setting.env_name})")):
            load_settings({setting.name: value}, environ={})
        return True

    for setting in numbers:
        assert setting.parse(str(setting.default)) == setting.default, setting.name
        for nonsense in ("inf", "-inf", "nan", "Infinity", float("inf"), float("nan"), True, False, "", "ten"):
            assert refused(setting, nonsense)
        if type(setting.default) is int:
            for nonsense in ("2.9", 2.9, "1e3", 10**400):
                assert refused(setting, nonsense)
            assert setting.parse(float(setting.default)) == setting.default  # 20.0 is 20
        elif setting.name == "FHIR_OPTIONAL_SHARE":  # none of the optional keys, or no reserve for later reads
            assert setting.parse("0.5") == 0.5
            for nonsense in ("0", "1", "1.5", "-0.25", 75):
                assert refused(setting, nonsense)
        else:  # seconds: at most a day, where timers and timeouts still work
            assert setting.parse("86400") == 86400.0
            for nonsense in ("86400.5", "1e300", 10**400):
                assert refused(setting, nonsense)


def test_sensible_values_still_load():
    settings = load_settings(
        {"ADULT_AGE": 18.0, "LOG_LEVEL": "debug", "WILSON_MIN_AGE": 3, "WILSON_MAX_AGE": 4},
        environ={
            "CDS_FHIR_TIME_BUDGET": "86400",
            "CDS_ALP_SITE_LOW_LIMITS": "female=35,male=200",
            "CDS_JWT_LEEWAY": "0_5",
        },
    )
    assert (settings.ADULT_AGE, settings.LOG_LEVEL, settings.FHIR_TIME_BUDGET) == (18, "DEBUG", 86400.0)
    assert type(settings.ADULT_AGE) is int and settings.JWT_LEEWAY == 5
    assert settings.ALP_SITE_LOW_LIMITS == {"female": 35.0, "male": 200.0}
    assert load_settings({"CORS_ORIGINS": ("https://a.example",)}, environ={}).CORS_ORIGINS == ("https://a.example",)


def test_the_alp_site_limit_bounds_lie_within_the_plausible_range_of_alp():
    import csv

    with (CLINICAL / "data" / "plausibility.csv").open() as rows:
        (alp,) = [row for row in csv.DictReader(rows) if row["analyte"] == "alp_total"]
    low, high = ALP_SITE_LIMIT_RANGE
    assert float(alp["low"]) <= low < high < float(alp["high"]) and alp["unit"] == "U/L"


def test_a_bad_log_level_stops_create_app_with_a_settings_error():
    from service.app import create_app

    with pytest.raises(SettingsError, match=re.escape("LOG_LEVEL (CDS_LOG_LEVEL)")):
        create_app({"AUTH": "off", "LOG_LEVEL": "VERBOSE", "FEEDBACK_DB_URL": "sqlite://"})


@pytest.mark.parametrize(
    ("site", "gender", "low", "source"),
    [
        ("female=35", "female", 35, "the site's lower limit"),
        ("female=35", "male", 40, "CALIPER"),  # was 35: the female limit for a man
        ("male=50", "female", 35, "CALIPER"),
        ("female=30", "unknown", 35, "CALIPER"),  # one sex given: the built-in table, both sexes combined
        ("female=30", None, 35, "CALIPER"),
        ("female=45,male=50", "male", 50, "the site's lower limit"),
        ("female=45,male=50", "other", 45, "the site's lower limit"),  # both given: the lower
        ("45", None, 45, "the site's lower limit"),
    ],
)
def test_a_sex_the_site_limits_leave_out_gets_the_built_in_limit_not_the_other_sexs(site, gender, low, source):
    from datetime import UTC, date, datetime

    from service.clinical.facts import Patient
    from service.clinical.limits import fallback_limits

    settings = load_settings({"ALP_SITE_LOW_LIMITS": site}, environ={}).clinical
    patient = Patient(id="p", birth_date=date(1970, 1, 1), gender=gender)
    limits = fallback_limits("alp_total", patient, datetime(2024, 6, 1, tzinfo=UTC), settings)
    assert limits is not None and limits.low == low and source in limits.source


# -------------------------------------------------------------------------------------------- the trust file


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("trust.yaml", "a: [b\n", "is not valid YAML (line 2)"),
        ("trust.yml", "a: b\n  c: d\n", "is not valid YAML (line 2)"),
        ("trust.json", '{\n  "a": \n}', "is not valid JSON (line 3)"),
        ("trust.txt", "a: b\n", "is not valid JSON (a .yaml or .yml file is read as YAML) (line 1)"),
        ("trust.json", b"\xff\xfe\x00\x00binary", "is not text (UTF-8): neither JSON nor YAML"),
        ("trust.yaml", "- just\n- a list\n", "trusted issuers must map each iss"),
    ],
)
def test_a_broken_trust_file_is_a_settings_error_naming_the_file(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SettingsError) as raised:
        load_settings(environ={"CDS_TRUSTED_ISSUERS_FILE": str(path)})
    message = str(raised.value)
    assert message.startswith("setting TRUSTED_ISSUERS (CDS_TRUSTED_ISSUERS_FILE): ") and says in message
    assert str(path) in message or "must map" in says


def test_trusted_issuer_keys_are_read_only_and_not_shared_with_the_caller():
    key = {"kty": "oct", "kid": "k1", "k": "c2VjcmV0", "key_ops": ["verify"]}
    source = {"https://iss.example.org": {"jwks": {"keys": [key]}, "tenant": {"id": "t"}}}
    settings = load_settings({"TRUSTED_ISSUERS": source}, {})
    source["https://iss.example.org"]["jwks"]["keys"].append({"kty": "oct", "kid": "evil", "k": "ZXZpbA"})
    key["k"] = "ZXZpbA"
    key["key_ops"].append("sign")
    source["https://iss.example.org"]["tenant"]["id"] = "other"
    issuer = settings.TRUSTED_ISSUERS["https://iss.example.org"]
    assert issuer["jwks"] == {"keys": ({"kty": "oct", "kid": "k1", "k": "c2VjcmV0", "key_ops": ("verify",)},)}
    assert issuer["tenant"] == {"id": "t"}
    with pytest.raises(TypeError):
        issuer["jwks"]["keys"] = []  # type: ignore[index]
    with pytest.raises(TypeError):
        issuer["jwks"]["keys"][0]["k"] = "ZXZpbA"  # type: ignore[index]
    with pytest.raises(AttributeError):
        issuer["jwks"]["keys"].append({})  # type: ignore[attr-defined]
    again = load_settings({"TRUSTED_ISSUERS": settings.TRUSTED_ISSUERS}, {})  # a loaded value loads again
    assert again.TRUSTED_ISSUERS == settings.TRUSTED_ISSUERS


def test_the_read_only_inline_keys_still_verify_a_token():
    from service.security import KeyStore

    settings = load_settings(
        {
            "TRUSTED_ISSUERS": {
                "https://iss.example.org": {
                    "jwks": {
                        "keys": [
                            {"kty": "oct", "kid": "k1", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "alg": "HS256"}
                        ]
                    }
                }
            }
        },
        {},
    )
    jwks = settings.TRUSTED_ISSUERS["https://iss.example.org"]["jwks"]
    key = KeyStore().key("inline:test", "k1", jwks)
    assert key is not None and key.key_id == "k1"
