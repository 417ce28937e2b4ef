"""The client's exceptions survive pickling: prefork pools and result backends carry them."""

from __future__ import annotations

import pickle

import pytest

from ecs_protection import (
    InvalidAnswerError,
    ProtectionUnavailableError,
    SidecarError,
    SidecarUnavailableError,
    TaskDrainingError,
    TooManyLeasesError,
)


@pytest.mark.parametrize(
    "error",
    [
        SidecarError(500, "Internal", "boom"),
        TaskDrainingError(503, "Draining", "the task is stopping"),
        ProtectionUnavailableError(503, "ProtectionUnavailable", "not confirmed"),
        TooManyLeasesError(429, "TooManyLeases", "full"),
        InvalidAnswerError(200, "not JSON"),
        SidecarUnavailableError("connection refused"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_error_pickles_to_the_same_class_status_code_and_message(error):
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301  (our own bytes)
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)
