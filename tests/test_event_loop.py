"""Which event loop a command runs on: uvloop where it is installed, asyncio when asked or without it."""

from __future__ import annotations

import asyncio
import builtins
import sys

import pytest
from codeclm.programs.engine import event_loop
from codeclm.programs.errors import SpecError


async def _loop_class() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_runs_by_default_where_it_is_installed(monkeypatch):
    pytest.importorskip("uvloop")
    monkeypatch.delenv("CODECLM_EVENT_LOOP", raising=False)
    assert event_loop.loop_name() == "uvloop"
    assert event_loop.run(_loop_class()).startswith("uvloop")


def test_codeclm_event_loop_asyncio_runs_the_standard_loop(monkeypatch):
    monkeypatch.setenv("CODECLM_EVENT_LOOP", "asyncio")
    assert event_loop.run(_loop_class()).startswith("asyncio")
    loop = event_loop.new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


def _without_uvloop(monkeypatch):
    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("no uvloop here (as on Windows)")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "uvloop", raising=False)
    monkeypatch.setattr(builtins, "__import__", refuse)


def test_without_uvloop_the_standard_loop_runs(monkeypatch):
    _without_uvloop(monkeypatch)
    monkeypatch.delenv("CODECLM_EVENT_LOOP", raising=False)
    assert event_loop.run(_loop_class()).startswith("asyncio")


def test_asking_for_uvloop_without_it_says_how_to_get_it(monkeypatch):
    _without_uvloop(monkeypatch)
    monkeypatch.setenv("CODECLM_EVENT_LOOP", "uvloop")
    with pytest.raises(SpecError, match="not installed") as caught:
        event_loop.loop_name()
    assert "pip install uvloop" in caught.value.hint


def test_an_unknown_loop_name_is_refused(monkeypatch):
    monkeypatch.setenv("CODECLM_EVENT_LOOP", "trio")
    with pytest.raises(SpecError, match="unknown event loop 'trio'"):
        event_loop.loop_name()
