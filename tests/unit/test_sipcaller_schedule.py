"""The test caller does its steps in the order a script means (voicebot.sipcaller.script.schedule)."""
from __future__ import annotations

from voicebot.sipcaller.script import Action, schedule


def kinds(actions: tuple[Action, ...]) -> list[str]:
    return [f"{a.kind}@{a.at:g}" for _i, a in schedule(actions)]


def test_a_when_quiet_hangup_listed_after_timed_plays_comes_after_them() -> None:
    # The barge-in call test's script: two questions at fixed times, then "hang up once Eva is quiet".
    script = (Action("play", at=3.0, path="a.wav"), Action("play", at=9.0, path="b.wav"),
              Action("hangup", when_quiet=2.0))
    assert kinds(script) == ["play@3", "play@9", "hangup@0"]


def test_timed_steps_keep_sorting_by_time_whatever_their_listed_order() -> None:
    script = (Action("hangup", at=20.0), Action("play", at=3.0, path="a.wav"), Action("dtmf", at=5.0, digits="1"))
    assert kinds(script) == ["play@3", "dtmf@5", "hangup@20"]


def test_a_when_quiet_step_first_in_the_script_is_first() -> None:
    script = (Action("play", when_quiet=1.0, path="a.wav"), Action("hangup", at=30.0))
    assert kinds(script) == ["play@0", "hangup@30"]


def test_a_when_heard_step_comes_after_the_steps_listed_before_it() -> None:
    # The barge-in test: ask at 5 s, then talk over the reply once it has been heard for a second.
    script = (Action("play", at=5.0, path="q.wav"), Action("play", when_heard=1.0, path="stop.wav"),
              Action("hangup", at=18.0))
    assert kinds(script) == ["play@5", "play@0", "hangup@18"]
