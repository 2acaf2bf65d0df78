"""The test helpers themselves: wait_until returns, retries and times out as documented; raygbm_home
restores the environment whatever happens inside the block."""

import os
import time

import pytest

from tests.helpers import raygbm_home, wait_until


def test_wait_until_returns_the_first_truthy_value():
    results = iter([0, None, [], {"ready": 1}, "later"])
    assert wait_until(lambda: next(results), 5, interval=0.001) == {"ready": 1}
    assert next(results) == "later"  # it stopped calling at the first truthy value


def test_wait_until_retries_exceptions_until_the_condition_holds():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not up yet")
        return "up"

    assert wait_until(flaky, 5, interval=0.001) == "up" and len(calls) == 3


def test_wait_until_times_out_with_the_message_and_last_error():
    calls = []

    def never():
        calls.append(1)
        raise ConnectionError(f"refused #{len(calls)}")

    start = time.monotonic()
    with pytest.raises(AssertionError) as err:
        wait_until(never, 0.2, interval=0.01, message="the endpoint")
    elapsed = time.monotonic() - start
    text = str(err.value)
    assert text.startswith("timed out after 0.2s waiting for the endpoint")
    assert f"refused #{len(calls)}" in text  # the last exception, not the first
    assert len(calls) > 2 and 0.2 <= elapsed < 2


def test_wait_until_timeout_without_an_exception_names_only_the_message():
    with pytest.raises(AssertionError, match=r"^timed out after 0.05s waiting for two replicas$"):
        wait_until(lambda: False, 0.05, interval=0.01, message="two replicas")
    with pytest.raises(AssertionError, match=r"^timed out after 0.01s waiting for condition$"):
        wait_until(lambda: 0, 0.01)


def test_raygbm_home_sets_and_restores_a_previous_value(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYGBM_HOME", "/previous")
    with raygbm_home(tmp_path / "h") as h:
        assert os.environ["RAYGBM_HOME"] == str(tmp_path / "h") and h == tmp_path / "h"
    assert os.environ["RAYGBM_HOME"] == "/previous"


def test_raygbm_home_removes_the_variable_it_added_even_on_error(tmp_path, monkeypatch):
    monkeypatch.delenv("RAYGBM_HOME", raising=False)
    with pytest.raises(RuntimeError, match="boom"):
        with raygbm_home(tmp_path):
            assert os.environ["RAYGBM_HOME"] == str(tmp_path)
            raise RuntimeError("boom")
    assert "RAYGBM_HOME" not in os.environ
