"""Fixtures of the command-line tests: a guard that no data is loaded, and small runs."""

import pytest

from functional_bp import data


@pytest.fixture
def no_data(monkeypatch):
    """Fails the test if any data set is loaded: for what must be refused before."""

    def loaded(*args, **kwargs):
        pytest.fail("a data set was loaded")

    monkeypatch.setattr(data, "load_digits", loaded)
    monkeypatch.setattr(data, "load_mnist", loaded)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Runs the test in an empty temporary directory, so that nothing can land in the
    repository; returns it."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
