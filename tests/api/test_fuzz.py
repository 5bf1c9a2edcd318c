"""schemathesis against /openapi.json: no 5xx and every response matches the schema."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import RunningServer


def test_openapi_fuzz(server: RunningServer) -> None:
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures: list[str] = []
    tested = 0
    for operation in schema.get_all_operations():
        op = operation.ok()

        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def run(case: schemathesis.Case) -> None:
            nonlocal tested
            response = case.call(base_url=server.url, timeout=60)
            tested += 1
            try:
                case.validate_response(response, checks=[not_a_server_error])
            except AssertionError as exc:
                failures.append(f"{case.method} {case.path}: {exc}")

        run()
    assert tested > 50
    assert failures == []
