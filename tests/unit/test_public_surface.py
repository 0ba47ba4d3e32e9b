"""What Stage D imports: one declared surface, `opsconductor.starter.__all__`."""

from __future__ import annotations

import subprocess
import sys

import opsconductor.starter as starter
from opsconductor.schema.config import Settings, load_settings
from opsconductor.schema.request import ExecutionRequest
from opsconductor.schema.validation import RequestValidationError

PROMISED = {"ExecutionClient", "ExecutionResponse", "ExecutionRequest",
            "RequestValidationError", "SubmissionRefused", "ExecutionNotFound",
            "DatabaseUnavailable", "Settings", "load_settings"}


def test_the_client_surface_is_declared_and_importable_from_one_place() -> None:
    assert PROMISED <= set(starter.__all__)
    assert len(starter.__all__) == len(set(starter.__all__))
    namespace: dict[str, object] = {}
    exec("from opsconductor.starter import *", namespace)
    assert set(starter.__all__) <= namespace.keys()

    from opsconductor.starter.client import ExecutionClient, SubmissionRefused

    assert starter.ExecutionClient is ExecutionClient
    assert starter.SubmissionRefused is SubmissionRefused
    assert starter.ExecutionRequest is ExecutionRequest
    assert starter.RequestValidationError is RequestValidationError
    assert starter.Settings is Settings and starter.load_settings is load_settings
    for name in ("SubmissionRefused", "ExecutionNotFound", "RequestValidationError",
                 "DatabaseUnavailable"):
        assert issubclass(getattr(starter, name), Exception), name


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        starter.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as err:
        assert "NoSuchThing" in str(err)
    else:
        raise AssertionError("an undeclared name resolved")


def test_the_surface_loads_lazily() -> None:
    """The CLI and the embedded servers import `opsconductor.starter.*` modules without
    paying for the whole client (the Temporal SDK, workflows, activities)."""
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, opsconductor.starter.embedded_postgres; "
         "print(sorted(m for m in ('temporalio', 'opsconductor.starter.client') "
         "if m in sys.modules))"], capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "[]"
