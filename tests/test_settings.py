"""The settings object: one frozen, typed declaration per setting; unknown names refused; the clinical rules see
only the narrow view they use."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from types import MappingProxyType

import pytest

from service.settings import SETTINGS, ClinicalSettings, Settings, SettingsError, load_settings, setting_names
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
