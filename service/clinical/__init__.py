"""The clinical core: codes and thresholds as data, typed facts, and pure rules. No Flask, no HTTP, no JSON."""
