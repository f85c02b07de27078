"""docs/errors.md is generated from app/errors.py and must not drift from it."""

from pathlib import Path

from app.errors import all_codes, errors_markdown, status_for

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def test_errors_doc_is_current() -> None:
    assert DOC.read_text() == errors_markdown(), "run: python -m app.errors > docs/errors.md"


def test_statuses_follow_api_md() -> None:
    assert status_for("ORDER_NOT_FOUND") == 404
    assert status_for("DUPLICATE_CLIENT_ORDER_ID") == 409
    assert status_for("INSUFFICIENT_BALANCE") == 400
    assert status_for("VALIDATION_ERROR") == 422
    assert status_for("UNKNOWN_API_KEY") == 401
    assert status_for("PERMISSION_DENIED") == 403
    assert status_for("RATE_LIMITED") == 429
    assert status_for("NOT_ACCEPTING_COMMANDS") == 503
    codes = all_codes()
    assert all(code == code.upper() and " " not in code for code in codes)
    assert len(codes) == 65  # update with docs/errors.md when a code is added
