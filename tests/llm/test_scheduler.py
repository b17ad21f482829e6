"""The embedded model's scheduler (EmbeddedLLM._schedule), without a model: generations are scripted steps, so
the order in which callers get the context, and what happens when saving or restoring a reply's state fails,
are checked exactly.  (tests/llm/test_qwen.py runs the same scheduler on the real model.)"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voicebot.errors import LlmUnavailable
from voicebot.llm.base import GenerationOptions
from voicebot.llm.embedded import EmbeddedLLM, _Job, _Running


class Script:
    """An EmbeddedLLM whose generations are scripted and whose KV saves are recorded, not done."""

    def __init__(self, tmp_path: Path) -> None:
        self.llm = EmbeddedLLM(tmp_path / "none.gguf")
        self.llm._llama = object()  # "loaded"
        self.order: list[str] = []
        self.emitted: dict[str, list[Any]] = {}
        self.steps: dict[str, Iterator[bool]] = {}
        self.fail_resume: set[str] = set()
        self.llm._steps = self._steps  # type: ignore[method-assign]
        self.llm._park = self._park  # type: ignore[method-assign]
        self.llm._resume = self._resume  # type: ignore[method-assign]

    def job(self, name: str, steps: Iterator[bool]) -> _Job:
        self.emitted[name] = []
        self.steps[name] = steps
        return _Job([], [], [], GenerationOptions(), threading.Event(), self.emitted[name].append)

    def name(self, job: _Job) -> str:
        return next(n for n, e in self.emitted.items() if e is job.emit.__self__)  # type: ignore[attr-defined]

    def _steps(self, job: _Job) -> Iterator[bool]:
        name = self.name(job)
        for may_pause in self.steps[name]:
            self.order.append(name)
            yield may_pause

    def _park(self, running: _Running) -> None:
        running.saved = ((), b"saved")

    def _resume(self, running: _Running) -> None:
        if running.saved is not None:
            running.saved = None
            if self.name(running.job) in self.fail_resume:
                raise RuntimeError("llama.cpp refused a KV-state snapshot")

    def queue(self, job: _Job) -> None:
        with self.llm._lock:
            self.llm._pending.append(job)

    def run(self, *jobs: _Job) -> None:
        for job in jobs:
            self.queue(job)
        self.llm._scheduling = True
        self.llm._schedule()


def test_a_newly_asked_reply_runs_before_the_rest_of_one_past_its_first_sentence(tmp_path: Path) -> None:
    s = Script(tmp_path)
    late = s.job("B", iter([False, False, True, True]))

    def first() -> Iterator[bool]:
        yield False  # A's first sentence
        yield False
        s.queue(late)  # B is asked while A finishes its first sentence
        yield True  # first sentence out: A may wait
        yield True
        yield True

    s.run(s.job("A", first()))
    assert s.order == ["A", "A", "A", "B", "B", "B", "B", "A", "A"]
    assert s.llm.preemptions == 1 and not s.llm._scheduling


def test_a_reply_in_its_first_sentence_is_never_paused(tmp_path: Path) -> None:
    s = Script(tmp_path)
    late = s.job("B", iter([False]))

    def first() -> Iterator[bool]:
        s.queue(late)
        yield False
        yield False

    s.run(s.job("A", first()))
    assert s.order == ["A", "A", "B"] and s.llm.preemptions == 0


def test_a_cancelled_request_does_not_pause_anyone(tmp_path: Path) -> None:
    s = Script(tmp_path)
    gone = s.job("B", iter([False]))
    gone.stop.set()  # barge-in: its caller stopped waiting before it ran

    def first() -> Iterator[bool]:
        s.queue(gone)
        yield True
        yield True

    s.run(s.job("A", first()))
    assert s.order == ["A", "A"] and s.llm.preemptions == 0


def test_replies_past_their_first_sentence_take_turns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from voicebot.llm import embedded

    monkeypatch.setattr(embedded, "_SLICE_S", 0.0)  # every pass is a slice
    s = Script(tmp_path)
    b = s.job("B", iter([True, True, True]))

    def first() -> Iterator[bool]:
        s.queue(b)
        yield True
        yield True
        yield True

    s.run(s.job("A", first()))
    assert s.order == ["A", "B", "A", "B", "A", "B"]


def test_a_state_that_cannot_be_restored_fails_that_reply_only(tmp_path: Path) -> None:
    s = Script(tmp_path)
    s.fail_resume.add("A")
    late = s.job("B", iter([False, True]))

    def first() -> Iterator[bool]:
        s.queue(late)
        yield True
        yield True

    s.run(s.job("A", first()))
    assert s.order == ["A", "B", "B"]
    assert [type(e) for e in s.emitted["A"]] == [RuntimeError]  # A's caller hears about it
    assert not s.llm._scheduling
    # The scheduler still works for the next caller.
    s.run(s.job("C", iter([False])))
    assert s.order[-1] == "C"


def test_a_scheduler_that_dies_fails_every_waiting_caller_and_can_start_again(tmp_path: Path) -> None:
    s = Script(tmp_path)
    waiting = s.job("B", iter([False]))

    def dies() -> Iterator[bool]:
        s.queue(waiting)
        yield True
        raise KeyboardInterrupt  # not an Exception: it ends the scheduler itself

    with pytest.raises(KeyboardInterrupt):
        s.run(s.job("A", dies()))
    assert [type(e) for e in s.emitted["A"]] == [LlmUnavailable]
    assert not s.llm._scheduling and not s.llm._pending
    # B, asked meanwhile, had its turn while A waited.
    assert "B" in s.order and s.emitted["B"] == []
