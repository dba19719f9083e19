"""FHIR access: the HTTP client, prefetch resolution and readers that turn FHIR JSON into facts."""
