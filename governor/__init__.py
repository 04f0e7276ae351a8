"""The governor: requests, job registry, dependencies, dispatch, journal, reports, CLI."""
