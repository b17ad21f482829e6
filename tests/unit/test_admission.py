"""The worker's call slots (voicebot.calls.admission): pure, no sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicebot.calls.admission import CALLS_PER_CORE, Admission, default_capacity, usable_cores
from voicebot.config import Settings
from voicebot.errors import ConfigError


def test_inbound_calls_are_admitted_up_to_the_capacity_and_the_next_is_refused() -> None:
    slots = Admission(2)
    assert slots.admit(("a", 1)) and slots.admit(("b", 2))
    assert not slots.admit(("c", 3))
    assert (slots.active, slots.free, slots.refused, slots.admitted) == (2, 0, 1, 2)
    slots.release(("a", 1))
    assert slots.free == 1 and slots.admit(("c", 4))
    assert slots.snapshot() == {"active": 2, "capacity": 2, "admitted": 3, "refused": 1}


def test_a_call_eva_placed_is_never_refused_on_answer_and_free_never_goes_negative() -> None:
    slots = Admission(1)
    assert slots.admit("inbound")
    assert slots.admit("campaign", placed_by_eva=True)
    assert slots.active == 2 and slots.free == 0 and slots.refused == 0
    assert not slots.admit("another inbound")


def test_release_is_idempotent_and_a_refused_call_holds_nothing() -> None:
    slots = Admission(1)
    assert slots.admit("one")
    assert not slots.admit("two")
    slots.release("two")  # refused: releasing it must not free "one"'s slot
    assert slots.active == 1
    slots.release("one")
    slots.release("one")
    assert slots.active == 0 and slots.free == 1


def test_admitting_the_same_call_twice_takes_one_slot() -> None:
    slots = Admission(1)
    assert slots.admit("one") and slots.admit("one")
    assert slots.active == 1 and slots.admitted == 1


def test_the_default_capacity_follows_the_cores_and_a_bad_setting_is_a_clear_error() -> None:
    assert default_capacity(2) == 2 * CALLS_PER_CORE
    assert default_capacity(0) == CALLS_PER_CORE  # an unknown count is one core, never zero slots
    assert default_capacity() >= CALLS_PER_CORE
    with pytest.raises(ConfigError) as raised:
        Admission(0)
    assert raised.value.field == "max_calls"
    assert Settings.load({"EVA_MAX_CALLS": "6"}).max_calls == 6
    with pytest.raises(ConfigError):
        Settings.load({"EVA_MAX_CALLS": "many"})


def test_a_cgroup_cpu_quota_caps_the_cores(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs: two cores' worth of calls at most
    assert usable_cores(cpu_max) == min(2, usable_cores(tmp_path / "missing"))
    cpu_max.write_text("max 100000\n")  # no quota
    assert usable_cores(cpu_max) == usable_cores(tmp_path / "missing") >= 1
    cpu_max.write_text("garbage")
    assert usable_cores(cpu_max) >= 1
