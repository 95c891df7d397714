"""The one table of problem codes (``mfcpl.wire.errors``) is complete, and everything that names a code and a
status derives from it: ``ProblemError``, the OpenAPI document's problem examples, the framework-error
mapping, and the code table in docs/api.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from coordinator.app import create_app
from coordinator.openapi import PROBLEM_EXAMPLES
from coordinator.problems import ProblemError, code_of_status
from coordinator.settings import Settings
from mfcpl.wire.constants import PROBLEM_CONTENT_TYPE
from mfcpl.wire.errors import ERROR_STATUS, GENERIC_CODE, ErrorCode, status_of, title_of
from mfcpl.wire.tensors import TensorFormatError

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
# A row of the code table: | 409 | `round_not_open` | ... (one cell may name several codes).
ROW = re.compile(r"^\|\s*(\d{3})\s*\|([^|]*)\|")


def test_every_code_has_one_status_and_every_generic_code_answers_its_status() -> None:
    assert set(ERROR_STATUS) == set(ErrorCode)
    for status, code in GENERIC_CODE.items():
        assert ERROR_STATUS[code] == status, code
    assert status_of("no_such_code") == 500


@pytest.mark.parametrize("code", list(ErrorCode))
def test_problem_error_takes_its_status_from_the_code(code: ErrorCode) -> None:
    problem = ProblemError(code, "why")
    assert (problem.status, problem.code, problem.title) == (ERROR_STATUS[code], str(code), title_of(problem.status))


def test_tensor_errors_keep_their_code_and_answer_422() -> None:
    for code in ("malformed_tensors", "dtype_mismatch", "non_finite", "a_code_from_a_newer_wire"):
        problem = ProblemError.from_tensor_error(TensorFormatError(code, "bad"))
        assert (problem.status, problem.code) == (422, code)


def test_framework_errors_get_the_generic_code_of_their_status() -> None:
    for status, code in GENERIC_CODE.items():
        assert code_of_status(status) == code
    assert code_of_status(405) == ErrorCode.METHOD_NOT_ALLOWED
    assert code_of_status(418) == ErrorCode.BAD_REQUEST
    assert code_of_status(502) == ErrorCode.INTERNAL


def test_api_doc_lists_every_code_with_its_status() -> None:
    documented: dict[str, int] = {}
    for line in API_DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            for code in re.findall(r"`([a-z_]+)`", match.group(2)):
                documented[code] = int(match.group(1))
    assert documented == {str(code): status for code, status in ERROR_STATUS.items()}


def _problem_examples(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        media = node.get(PROBLEM_CONTENT_TYPE)
        if isinstance(media, dict) and "example" in media:
            found.append(media["example"])
        if isinstance(media, dict) and "examples" in media:
            found += [entry["value"] for entry in media["examples"].values()]
        for value in node.values():
            found += _problem_examples(value)
    elif isinstance(node, list):
        for value in node:
            found += _problem_examples(value)
    return found


def test_openapi_problem_examples_follow_the_table(tmp_path: Path) -> None:
    settings = Settings(admin_token="codes", database_url=f"sqlite:///{tmp_path / 'mfcpl.db'}",
                        blob_dir=tmp_path / "blobs")
    app = create_app(settings)
    try:
        examples = _problem_examples(app.openapi())
    finally:
        app.state.services.db.dispose()
    assert examples
    for example in examples:
        assert example["status"] == ERROR_STATUS[ErrorCode(example["code"])], example
    assert all(example == {**PROBLEM_EXAMPLES[ErrorCode(example["code"])], "detail": example["detail"]}
               for example in examples)


def test_openapi_errors_are_problem_documents_with_the_codes_each_operation_can_answer(tmp_path: Path) -> None:
    """422 is a problem (not FastAPI's HTTPValidationError); 401/403 carry the operation's own examples; an error
    of one operation (a round's `round_not_open`, an update's `not_participant`) is not copied to the others."""
    settings = Settings(admin_token="codes", database_url=f"sqlite:///{tmp_path / 'mfcpl.db'}",
                        blob_dir=tmp_path / "blobs")
    app = create_app(settings)
    try:
        document = app.openapi()
    finally:
        app.state.services.db.dispose()
    assert "HTTPValidationError" not in document["components"]["schemas"]
    specific = {"not_participant", "round_not_open", "stale_round", "shape_mismatch"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) < 400 or path == "/readyz":
                    continue
                media = response["content"][PROBLEM_CONTENT_TYPE]
                assert set(response["content"]) == {PROBLEM_CONTENT_TYPE}, (method, path, status)
                assert media["schema"] == {"$ref": "#/components/schemas/Problem"}, (method, path, status)
                codes = {e["code"] for e in _problem_examples(response)}
                assert codes, (method, path, status)
                if not path.endswith("/updates") or method != "post":
                    assert not codes & specific, (method, path, status, codes)
            if "x-mfcpl-roles" in operation:
                forbidden = operation["responses"]["403"]
                assert "forbidden" in {e["code"] for e in _problem_examples(forbidden)}
