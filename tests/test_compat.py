"""Unsupported stack versions fail with a message that says what to install."""

import pytest

from dynsdpb_selfplay import _compat


def test_too_old_trl_is_refused_with_the_install_line(monkeypatch):
    monkeypatch.setattr(_compat, "version", lambda name: "1.10.0" if name == "trl" else "99.0")
    with pytest.raises(ImportError, match=r"supports trl >= 1\.16\.0 \(found 1\.10\.0\).*pip install 'trl>=1\.16\.0"):
        _compat.check_versions()


def test_untested_newer_version_warns(monkeypatch):
    real = _compat.version
    monkeypatch.setattr(_compat, "version", lambda name: "1.17.2" if name == "trl" else real(name))
    with pytest.warns(UserWarning, match="tested with trl < 1.17.0, found 1.17.2"):
        _compat.check_versions()


def test_installed_versions_are_supported():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        _compat.check_versions()
