"""The models' threads run below the media clock (``voicebot.media.priority``).

The unit half checks the mechanics: the executor initializer lowers the worker and what it creates, not the
caller; the setting is validated; the GIL switch interval follows it.  The model half loads the real Whisper,
Piper and llama.cpp, makes each work, and checks that every thread that spent CPU time on it (CTranslate2's and
OpenMP's, ONNX Runtime's, ggml's: native threads Python never sees) runs at the lowered priority.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from voicebot.errors import ConfigError
from voicebot.llm.base import ChatMessage, Done, GenerationOptions
from voicebot.media import priority

T = TypeVar("T")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


@pytest.fixture(autouse=True)
def _default_priority() -> Iterator[None]:
    yield
    priority.configure(priority.DEFAULT_NICE)


def _in_thread(func: Callable[[], T]) -> T:
    box: list[T] = []
    thread = threading.Thread(target=lambda: box.append(func()))
    thread.start()
    thread.join()
    return box[0]


def test_the_initializer_lowers_the_worker_and_the_threads_it_creates_not_the_caller() -> None:
    priority.configure(7)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def worker() -> tuple[int, int]:
        priority.background_thread()
        child = _in_thread(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), child

    lowered, inherited = _in_thread(worker)
    assert (lowered, inherited) == (max(7, mine), max(7, mine))
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine
    assert sys.getswitchinterval() == pytest.approx(priority.SWITCH_INTERVAL_S)


def test_zero_leaves_threads_alone_and_restores_pythons_switch_interval() -> None:
    priority.configure(0)
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def worker() -> int:
        priority.background_thread()
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    assert _in_thread(worker) == mine
    assert sys.getswitchinterval() == pytest.approx(priority.PYTHON_SWITCH_INTERVAL_S)


@pytest.mark.parametrize("bad", [-1, 20, 99])
def test_a_nice_value_out_of_range_is_a_clear_configuration_error(bad: int) -> None:
    with pytest.raises(ConfigError) as caught:
        priority.configure(bad)
    assert caught.value.field == "model_nice" and "EVA_MODEL_NICE" in caught.value.message


def test_thread_stats_list_this_thread_with_its_nice_value_and_cpu_time() -> None:
    tid = threading.get_native_id()
    nice, ticks = priority.thread_nice(), priority.thread_cpu_ticks()
    assert nice[tid] == os.getpriority(os.PRIO_PROCESS, tid)
    assert ticks[tid] >= 0 and set(nice) == set(ticks)


@pytest.mark.models
async def test_every_thread_doing_model_work_runs_below_the_media_clock() -> None:
    from tests.embedded_model import shared_embedded_llm
    from voicebot.stt.whisper import WhisperStt
    from voicebot.tts.piper import PiperSpeaker

    priority.configure(priority.DEFAULT_NICE)
    stt, tts = WhisperStt(), PiperSpeaker()
    llm = shared_embedded_llm()
    try:
        await tts.speak("Ready.", 16000)  # loads the voice on its worker
        before = priority.thread_cpu_ticks()
        for _ in range(2):
            audio = await tts.speak("We open at nine in the morning, Monday to Friday, and close at six.", 16000)
            heard = await stt.transcribe(audio.samples, audio.rate)
            async for event in llm.stream([ChatMessage("user", "When do you open?")],
                                          options=GenerationOptions(max_tokens=24, temperature=0.0)):
                if isinstance(event, Done):
                    break
        after, nice = priority.thread_cpu_ticks(), priority.thread_nice()
    finally:
        stt.close()
        tts.close()
    assert "nine" in heard.text.lower() or "9" in heard.text, heard
    loop_thread = threading.get_native_id()
    busy = {tid: after[tid] - before.get(tid, 0) for tid in after if after[tid] - before.get(tid, 0) >= 3}
    workers = {tid: spent for tid, spent in busy.items() if tid != loop_thread}
    # Whisper, Piper and llama.cpp each kept at least one thread busy; none of them at the loop's priority.
    assert len(workers) >= 3, (busy, nice)
    assert {tid: nice[tid] for tid in workers if nice.get(tid, 0) < priority.DEFAULT_NICE} == {}, (workers, nice)
    assert nice[loop_thread] < priority.DEFAULT_NICE


def test_numpys_blas_runs_on_one_thread_while_priorities_are_on() -> None:
    from threadpoolctl import threadpool_info

    def blas_threads() -> set[int]:
        return {int(pool["num_threads"]) for pool in threadpool_info() if pool["user_api"] == "blas"}

    priority.configure(0)
    original = blas_threads()
    priority.configure(priority.DEFAULT_NICE)
    assert blas_threads() == {1}
    priority.configure(0)
    assert blas_threads() == original


def test_each_model_takes_every_core_alone_and_its_share_while_another_works() -> None:
    cores = min(priority._cores(), 4)
    priority.configure_threads(0, 0)
    assert priority.llm_threads() == cores and priority.speech_threads_now("stt") == cores
    with priority.working("stt"):
        assert priority.llm_threads() == max(1, cores // 2)
        assert priority.speech_threads_now("stt") == cores  # its own work does not count
        assert priority.speech_threads_now("tts") == max(1, priority._cores() // 3)
    with priority.working("llm"):
        assert priority.llm_threads() == cores
        assert priority.speech_threads_now("stt") == max(1, priority._cores() // 3)
    assert priority.llm_threads() == cores
    assert set(priority.speech_thread_choices()) == {cores, max(1, priority._cores() // 3)}
    priority.configure_threads(3, 5)
    try:
        with priority.working("stt"), priority.working("llm"):
            assert (priority.speech_threads_now("tts"), priority.llm_threads()) == (3, 5)  # fixed: never adapted
        assert priority.speech_thread_choices() == (3,)
    finally:
        priority.configure_threads(0, 0)


@pytest.mark.parametrize(("speech", "llm"), [(-1, 0), (0, 65)])
def test_thread_counts_out_of_range_are_a_clear_configuration_error(speech: int, llm: int) -> None:
    with pytest.raises(ConfigError) as caught:
        priority.configure_threads(speech, llm)
    assert caught.value.field in ("speech_threads", "llm_threads")


@pytest.mark.models
async def test_the_models_use_the_threads_sized_for_a_shared_machine() -> None:
    from tests.embedded_model import shared_embedded_llm
    from voicebot.stt.whisper import WhisperStt
    from voicebot.tts.piper import PiperTts

    voice = PiperTts()
    sessions = {n: session.get_session_options() for n, session in voice._sessions.items()}
    assert set(sessions) == set(priority.speech_thread_choices())
    assert all(o.intra_op_num_threads == n for n, o in sessions.items())
    assert all(o.get_session_config_entry("session.intra_op.allow_spinning") == "0" for o in sessions.values())
    alone = priority.speech_threads(alone=True)
    voice.synthesize_blocking("Hello.")
    assert voice._voice.session is voice._sessions[alone]
    with priority.working("llm"):  # the LLM decoding meanwhile: Piper's share
        voice.synthesize_blocking("Hello.")
        assert voice._voice.session is voice._sessions[priority.speech_threads()]

    stt = WhisperStt()
    try:
        assert set(stt.threads) == set(priority.speech_thread_choices())
        with priority.working("llm"):
            assert stt._model_now() is stt._models[priority.speech_threads()]
        assert stt._model_now() is stt._models[alone]
    finally:
        stt.close()

    llm = shared_embedded_llm()
    assert llm.adaptive_threads

    async def generate() -> int:
        async for event in llm.stream([ChatMessage("user", "Hello?")],
                                      options=GenerationOptions(max_tokens=4, temperature=0.0)):
            if isinstance(event, Done):
                break
        return llm._threads_now

    with priority.working("stt"):  # Whisper transcribing meanwhile
        assert await generate() == max(1, min(priority._cores(), 4) // 2)
    assert await generate() == min(priority._cores(), 4)
