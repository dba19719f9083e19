"""Prometheus metrics.

With ``PROMETHEUS_MULTIPROC_DIR`` set (the client library's own multiprocess mode), every process writes its values
to files in that directory and a scrape of any worker reports the sum over all the workers of the instance: the
directory must exist, be writable, be private to one instance (an ``emptyDir`` per pod) and be emptied when the
instance starts (``service/gunicorn_conf.py: on_starting`` does). Without it, the values are this process's only.
The variable must be set before this module is imported (the client library decides at import).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
if MULTIPROC_DIR:  # a worker started by hand (not under alp-cds serve) may find it missing
    os.makedirs(MULTIPROC_DIR, exist_ok=True)

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
OVERLOADED = Counter(
    "cds_overloaded_total", "Hook calls refused with 503 by a bulkhead (fhir, large)", ["bulkhead"], registry=REGISTRY
)
FHIR_FETCHES = Counter("cds_fhir_fetches_total", "FHIR GETs by outcome", ["outcome"], registry=REGISTRY)
FHIR_SECONDS = Histogram("cds_fhir_fetch_seconds", "FHIR GET latency", buckets=LATENCY_BUCKETS, registry=REGISTRY)
PREFETCH_SECONDS = Histogram(
    "cds_prefetch_fetch_seconds",
    "Wall time a hook call spent fetching prefetch data from the FHIR server (only calls that fetched)",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
PREFETCH_UNAVAILABLE = Counter(
    "cds_prefetch_unavailable_total",
    "Optional prefetch keys that could not be had (the call was answered without them, its cards say so)",
    ["key"],
    registry=REGISTRY,
)
PREFETCH_INCOMPLETE = Counter(
    "cds_prefetch_incomplete_total",
    "Prefetch searches of which only the first pages could be read (the call used them, its cards say so)",
    ["key"],
    registry=REGISTRY,
)
CARDS = Counter("cds_cards_total", "Cards issued by kind and indicator", ["kind", "indicator"], registry=REGISTRY)
FEEDBACK = Counter("cds_feedback_total", "Feedback items stored by outcome", ["outcome"], registry=REGISTRY)
AUDIT_DROPPED = Counter(
    "cds_issued_cards_dropped_total", "Issued-card audit rows dropped (writer queue full)", registry=REGISTRY
)
OVERRIDE_LOOKUPS = Counter(
    "cds_override_lookups_total",
    "Readings of a patient's overrides at hook calls by outcome: found, none, timeout (not within "
    "OVERRIDE_LOOKUP_TIMEOUT), error, busy (every reading slot taken); the last three answered without the memory",
    ["outcome"],
    registry=REGISTRY,
)
OVERRIDE_DOWNGRADES = Counter(
    "cds_override_downgrades_total",
    "Warnings shown as information because the card kind was overridden for the patient and nothing new happened",
    ["kind"],
    registry=REGISTRY,
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


def exposition() -> bytes:
    """The text a scrape gets: every worker's values summed in multiprocess mode, else this process's."""
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
