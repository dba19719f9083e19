"""Prometheus metrics (per process; see the README for gunicorn's several workers)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter(
    "cds_requests_total",
    "HTTP requests by endpoint, service and status",
    ["endpoint", "service", "status"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "cds_request_seconds",
    "Request latency by endpoint, service and status",
    ["endpoint", "service", "status"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
FHIR_FETCHES = Counter("cds_fhir_fetches_total", "FHIR GETs by outcome", ["outcome"], registry=REGISTRY)
FHIR_SECONDS = Histogram("cds_fhir_fetch_seconds", "FHIR GET latency", buckets=LATENCY_BUCKETS, registry=REGISTRY)
PREFETCH_SECONDS = Histogram(
    "cds_prefetch_fetch_seconds",
    "Wall time a hook call spent fetching prefetch data from the FHIR server (only calls that fetched)",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CARDS = Counter("cds_cards_total", "Cards issued by kind and indicator", ["kind", "indicator"], registry=REGISTRY)
FEEDBACK = Counter("cds_feedback_total", "Feedback items stored by outcome", ["outcome"], registry=REGISTRY)
AUDIT_DROPPED = Counter(
    "cds_issued_cards_dropped_total", "Issued-card audit rows dropped (writer queue full)", registry=REGISTRY
)
FOREIGN_DROPPED = Counter(
    "cds_foreign_resources_dropped_total",
    "Resources dropped because they belong to another patient than the hook call's",
    ["resource_type"],
    registry=REGISTRY,
)
UNREADABLE_RESULTS = Counter(
    "cds_unreadable_results_total",
    "Lab results of a known code that could not be used (named in the card instead)",
    ["reason"],
    registry=REGISTRY,
)
