"""``--reason`` of ``dlq list`` and ``redrive``: a reason no dead letter can carry is a
one-line usage error naming the known ones, not a selection that silently matches nothing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from worker import errors
from worker.deadletters import Selection
from worker.dlq_reasons import REDRIVE_POLICY_REASON, known_reasons
from worker.errors import ConfigError, JobError

WORKER = Path(errors.__file__).resolve().parent


def _job_error_classes() -> dict[str, type[JobError]]:
    found: dict[str, type[JobError]] = {}
    pending = [JobError]
    while pending:
        error_class = pending.pop()
        found[error_class.__name__] = error_class
        pending += error_class.__subclasses__()
    return found


def _reasons_raised_in_the_code() -> set[str]:
    """Every ``SomeJobError(..., reason="literal")`` in worker/ (the overrides)."""
    names = set(_job_error_classes())
    found = set()
    for path in WORKER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name not in names:
                continue
            for keyword in node.keywords:
                if keyword.arg == "reason" and isinstance(keyword.value, ast.Constant):
                    found.add(str(keyword.value.value))
    return found


def test_every_reason_the_worker_can_write_is_known() -> None:
    overrides = _reasons_raised_in_the_code()
    assert {"media_not_allowed", "aws_access_denied"} <= overrides  # the scan finds them
    classes = {cls.reason for name, cls in _job_error_classes().items() if name != "JobError"}
    assert classes | overrides | {REDRIVE_POLICY_REASON} == known_reasons()


def test_known_reasons_select() -> None:
    for reason in known_reasons():
        assert Selection.of([reason]).reasons == {reason}
    both = "retries_exhausted:connect_audio_not_ready"
    assert Selection.of([both, "media_invalid"]).reasons == {both, "media_invalid"}


@pytest.mark.parametrize(
    "reason",
    ["media_invalidd", "x", "", "retries_exhausted:nope", "nope:lease_held", "a:b:c"],
)
def test_an_unknown_reason_is_a_one_line_usage_error(reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Selection.of(["media_invalid", reason])
    message = str(caught.value)
    assert message.startswith(f"--reason {reason!r}: unknown"), message
    assert "\n" not in message
    for known in ("media_invalid", "retries_exhausted", "redrive_policy", "lease_held"):
        assert known in message
