"""SMART on FHIR companion app: EHR launch (PKCE), then a server-rendered page of the patient's ALP history."""
