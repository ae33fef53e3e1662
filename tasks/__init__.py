"""Prefect tasks: thin wrappers around posescene library calls (retries/caching live here, not in the library)."""
