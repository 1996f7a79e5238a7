"""Shared test set-up: fixtures that start real servers live in tests/fixtures/."""

# Each fixture module registers itself here (one line each).
pytest_plugins: list[str] = ["fixtures.pki", "fixtures.service", "fixtures.small_fs", "fixtures.storage_servers", "fixtures.proxy", "fixtures.transfer_service", "fixtures.http_side", "fixtures.tally", "fixtures.bad_input"]
