"""Schemathesis against a real ``bitplan serve``: requests generated from the server's own
/openapi.json (valid and invalid ones, every operation, a bounded number per operation) must
never get a 5xx, and every response must match the document — status, media type, headers and
body schema. The server runs no jobs (BITPLAN_MAX_RUNNING=0), so submissions stay queued."""
from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (allow_header_conformance, content_type_conformance,  # noqa: E402
                                               ignored_auth, response_headers_conformance, response_schema_conformance,
                                               status_code_conformance, unsupported_method)

from tests.service.conftest import Server  # noqa: E402

pytestmark = pytest.mark.integration
# zero 5xx, zero responses outside the document; plus: a request without the token is refused
# (ignored_auth), and an undocumented method gets 405 with an Allow header that lists the
# documented ones (unsupported_method, allow_header_conformance). Not negative_data_rejection:
# unknown query parameters are ignored, as HTTP APIs usually do, and it counts them as accepted.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, ignored_auth, unsupported_method, allow_header_conformance]
MAX_EXAMPLES = 50


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzzed(request, tmp_path_factory):
    var = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    url = f"sqlite:///{var / 'bitplan.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_database")
    srv = Server(var, url, BITPLAN_MAX_RUNNING="0", BITPLAN_MAX_BODY_BYTES=str(256 << 10)).start()
    with srv.client() as c:  # one real model, so that its id is in the database the fuzzer talks to
        c.register_model("builtin:digits-cnn")
    yield srv
    srv.stop()


def _fuzz(operation, mode, srv) -> str | None:
    """Up to MAX_EXAMPLES generated requests for one operation; the first failure, shrunk."""
    auth = {"Authorization": f"Bearer {srv.token}"}

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy(generation_mode=mode))
    def run(case) -> None:
        case.call_and_validate(base_url=srv.url, headers=auth, checks=CHECKS, timeout=120)
    try:
        run()
    except Unsatisfiable:  # nothing to make invalid (no parameters, no body): only for negative mode
        return None if mode is GenerationMode.NEGATIVE else f"{operation.method.upper()} {operation.path}: no cases"
    except (Exception, BaseExceptionGroup) as e:  # schemathesis' FailureGroup, with the reproducing request
        return f"{operation.method.upper()} {operation.path} [{mode.value}]: {e}"
    return None


def test_no_5xx_and_every_response_matches_the_document(fuzzed):
    """Driven through schemathesis' strategies rather than its pytest plugin (whose lazy
    fixture loader touches pytest internals that pytest 9.2 removed)."""
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 15
    failures = [f for op in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                if (f := _fuzz(op, mode, fuzzed))]
    assert not failures, "\n\n".join(failures)
