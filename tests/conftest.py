"""Shared fixtures: a real Asterisk booted once per test session, and a real SIP caller (pjsua2); plus what
keeps the tiers honest.

The test Asterisk uses its own data directory and its own ports, so it never disturbs an Eva started with
``make run`` on the same machine.

Every test runs with a clean environment: ``EVA_*`` variables from the developer's shell are removed before
anything reads them (a PostgreSQL or Chroma URL there would otherwise reach tests that migrate, seed and delete),
except the two the test infrastructure itself is given by ``.ci/run`` (see :data:`INFRASTRUCTURE_ENV`).

Markers are derived, not written by hand: :data:`MARK_BY_FIXTURE` names the fixtures that boot Asterisk, load a
model or start a server process, and each test is marked by the fixtures it uses (directly or through other
fixtures; a database fixture parametrized to ``postgresql`` counts as a server).  ``make fast`` selects the tests
with none of the three marks.  Two tripwires keep the table true: setting up one of those fixtures for a test
without its mark fails the test, and so does loading a model (LLM, embedder, Whisper, Piper) or booting
Asterisk outside a fixture in a test not marked for it (mark such a test by hand, ``@pytest.mark.models``).
"""

from __future__ import annotations

import inspect
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg import postgres_server, postgres_url  # noqa: F401 - shared fixtures: a real PostgreSQL
from voicebot.asterisk.image import image_ready
from voicebot.asterisk.process import Asterisk
from voicebot.config import Settings
from voicebot.harness import free_udp_port, isolated_settings
from voicebot.sipcaller import Action, CallResult, CallScript, place_call

INFRASTRUCTURE_ENV = frozenset({"EVA_ASTERISK_ROOT", "EVA_DATA_DIR"})
"""``EVA_*`` variables that reach the tests: where the Asterisk image and the assembled models are (``.ci/run``
points both at freshly built throw-away folders).  Everything else is settings a test must set itself."""

MARK_BY_FIXTURE: dict[str, frozenset[str]] = {
    "asterisk": frozenset({"asterisk", "own_asterisk"}),
    "models": frozenset({"embedded_llm", "qwen", "demo_world", "demo_data", "local_embedder", "api_embedder",
                         "embedder", "whisper", "say", "llm_api", "live_server", "speech_api", "voice_world",
                         "voice_note",
                         "runtime",  # the voice runtime loads Whisper and Piper
                         "own_asterisk"}),  # a private Asterisk whose prompts Piper synthesizes first
    "servers": frozenset({"postgres_server", "postgres_url", "dovecot", "chroma_server",
                          "browser", "console"}),  # the console's tests start Chromium
    "db": frozenset({"engine", "sqlite_engine", "new_engine", "any_engine", "api", "api_db", "sqlite_db", "any_db",
                     "demo_engine", "demo_world", "demo_data", "kb", "make_agent", "voice_settings", "runtime",
                     "live_server", "live_api", "llm_api", "db", "database_url", "speech_api", "voice_world"}),
}
"""Fixtures that boot Asterisk, load a real model, start a server process (PostgreSQL, dovecot, Chroma), or
migrate a database (SQLite files: a tenth of a second or more each, most of what a test with one costs)."""
SERVER_PARAMS = frozenset({"postgresql", "postgres"})
"""Parameter values of the database fixtures (``engine``, ``any_db``, ...) that put a test on PostgreSQL."""
HEAVY_MARKS = tuple(MARK_BY_FIXTURE)


def _scrub_environment() -> list[str]:
    removed = [name for name in os.environ if name.startswith("EVA_") and name not in INFRASTRUCTURE_ENV]
    for name in removed:
        del os.environ[name]
    return removed


def pytest_configure(config: pytest.Config) -> None:
    # At configure time, before collection imports test modules and before any session fixture reads Settings.
    _scrub_environment()


def derived_marks(item: pytest.Item) -> set[str]:
    """The heavy marks a test earns from the fixtures it uses."""
    names = set(getattr(item, "fixturenames", ()))
    marks = {mark for mark, fixtures in MARK_BY_FIXTURE.items() if names & fixtures}
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(isinstance(v, str) and v in SERVER_PARAMS for v in callspec.params.values()):
        marks.add("servers")
    return marks


def _is_property_test(item: pytest.Item) -> bool:
    """A hypothesis test: decorated with ``@given``, running a ``@given`` function it defines inside, or calling a
    function of its module that does (a fuzz shared by a SQLite and a PostgreSQL test)."""
    function = getattr(item, "obj", None)
    if function is None:
        return False
    if getattr(function, "is_hypothesis_test", False):
        return True
    module = inspect.getmodule(function)
    helpers = [getattr(module, name) for name in getattr(getattr(function, "__code__", None), "co_names", ())
               if inspect.isfunction(getattr(module, name, None))]
    for candidate in [function, *helpers]:
        try:
            if "@given(" in inspect.getsource(candidate):
                return True
        except (OSError, TypeError):
            continue
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for mark in sorted(derived_marks(item)):
            item.add_marker(mark)
        if _is_property_test(item):
            item.add_marker("fuzz")  # hundreds of generated examples each: not for the seconds-long loop
        if "models" in derived_marks(item) or item.get_closest_marker("models") is not None:
            item.add_marker("slow")  # the old name for "loads real models", kept for `-m "not slow"`


def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> None:
    """Tripwire 1: a heavy fixture set up for a test that does not carry its mark (a ``getfixturevalue`` the
    derivation cannot see, or a fixture missing from MARK_BY_FIXTURE) fails that test."""
    item = getattr(request, "_pyfuncitem", None)
    if item is None:
        return
    for mark, fixtures in MARK_BY_FIXTURE.items():
        if mark == "db" and _outside_fast(item):
            continue
        if fixturedef.argname in fixtures and item.get_closest_marker(mark) is None:
            pytest.fail(f"{item.nodeid} sets up fixture {fixturedef.argname!r} but is not marked {mark!r}: "
                        "tests/conftest.py derives marks from fixtures; fix MARK_BY_FIXTURE or SERVER_PARAMS",
                        pytrace=False)


OUTSIDE_FAST = ("asterisk", "models", "servers", "fuzz", "long")
"""Marks that already keep a test out of ``make fast``: the ``db`` mark matters only for the others."""


def _outside_fast(item: Any) -> bool:
    return any(item.get_closest_marker(mark) is not None for mark in OUTSIDE_FAST)


def stop_process(process: subprocess.Popen[Any]) -> None:
    """End a test server's process: terminate, then kill it if it has not exited after 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class UnmarkedHeavyUse(RuntimeError):
    """A test not marked for it loaded a model or booted Asterisk (tripwire 2)."""


@pytest.fixture(autouse=True)
def _clean_environment_and_tripwires(request: pytest.FixtureRequest,
                                     monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test: no ``EVA_*`` from the shell (also none a previous test left behind), and, unless the test is
    marked for it, no model load and no Asterisk boot (the attempt raises, and the test fails even if the code
    under test caught the error)."""
    for name in [n for n in os.environ if n.startswith("EVA_") and n not in INFRASTRUCTURE_ENV]:
        monkeypatch.delenv(name)
    tripped: list[str] = []

    def wire(what: str, mark: str) -> Any:
        def tripped_call(*_args: Any, **_kwargs: Any) -> Any:
            tripped.append(what)
            raise UnmarkedHeavyUse(f"{request.node.nodeid} {what} but is not marked {mark!r}")
        return tripped_call

    if request.node.get_closest_marker("models") is None:
        import rag.embeddings
        from voicebot.llm.embedded import EmbeddedLLM
        from voicebot.stt.whisper import WhisperStt
        from voicebot.tts.piper import PiperTts

        monkeypatch.setattr(EmbeddedLLM, "_load", wire("loads the embedded LLM", "models"))
        monkeypatch.setattr(rag.embeddings, "load_sentence_model", wire("loads the embedding model", "models"))
        monkeypatch.setattr(WhisperStt, "__init__", wire("loads Whisper", "models"))
        monkeypatch.setattr(PiperTts, "__init__", wire("loads a Piper voice", "models"))
    if request.node.get_closest_marker("asterisk") is None:
        monkeypatch.setattr(Asterisk, "start", wire("boots Asterisk", "asterisk"))
    if request.node.get_closest_marker("db") is None and not _outside_fast(request.node):
        import alembic.command

        monkeypatch.setattr(alembic.command, "upgrade", wire("migrates a database", "db"))
    yield
    if tripped:
        pytest.fail(f"{request.node.nodeid} {tripped[0]} but is not marked for it: use the fixture that provides it "
                    "(tests/conftest.py derives marks from fixtures) or mark the test by hand", pytrace=False)


@pytest.fixture(scope="session")
def eva_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings for the test instance: private data dir, shifted ports, generated secrets."""
    return isolated_settings(tmp_path_factory.mktemp("eva-data"))


@pytest.fixture(scope="session")
def asterisk(eva_settings: Settings) -> Iterator[Asterisk]:
    """The real Asterisk 22, booted once for the session and stopped at the end."""
    from voicebot.setup import _prompt_run

    if not image_ready(eva_settings.asterisk_root):
        pytest.fail(f"no Asterisk image at {eva_settings.asterisk_root}: run `make setup`")
    _prompt_run(eva_settings)
    instance = Asterisk(eva_settings)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


class Caller:
    """Places real SIP calls into the test Asterisk, as the local carrier would."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.count = 0

    def script(self, number: str, *actions: Action, record: bool = True, timeout: float = 15.0,
               bind_ip: str | None = None, from_user: str = "caller") -> CallScript:
        self.count += 1
        return CallScript(
            uri=f"sip:{number}@{self.settings.bind_host}:{self.settings.sip_port}",
            actions=tuple(actions),
            record_path=str(self.workdir / f"call{self.count}.wav") if record else "",
            timeout=timeout,
            bind_ip=bind_ip or self.settings.local_carrier_ip,
            bind_port=free_udp_port(),
            from_user=from_user,
        )

    def call(self, number: str, *actions: Action, record: bool = True, timeout: float = 15.0,
             bind_ip: str | None = None, from_user: str = "caller") -> CallResult:
        return place_call(self.script(number, *actions, record=record, timeout=timeout, bind_ip=bind_ip,
                                      from_user=from_user))


@pytest.fixture
def caller(asterisk: Asterisk, eva_settings: Settings, tmp_path: Path) -> Caller:
    return Caller(eva_settings, tmp_path)
