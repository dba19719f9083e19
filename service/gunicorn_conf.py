"""gunicorn settings used by ``alp-cds serve``."""

import gc


def post_worker_init(worker) -> None:
    """Large prefetch Bundles allocate hundreds of thousands of small objects; with the default thresholds the
    cycle collector runs over them many times per request. Freeze what start-up built and collect less often
    (measured in bench/: see docs/benchmarks.md)."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
