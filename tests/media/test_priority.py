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
    saved = dict(priority._working)
    priority._working.clear()  # a model job another test left running must not count here
    yield
    priority._working.update(saved)
    priority.configure(priority.DEFAULT_NICE)
    priority.configure_threads(0, 0)


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
    from tests.embedded_model import gguf_path
    from voicebot.config import Settings
    from voicebot.llm.embedded import EmbeddedLLM
    from voicebot.stt.whisper import WhisperStt
    from voicebot.tts.piper import PiperSpeaker

    priority.configure(priority.DEFAULT_NICE)
    existing = set(priority.thread_nice())  # threads of earlier tests and of pytest: not this test's business
    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    stt, tts = WhisperStt(), PiperSpeaker()
    llm = EmbeddedLLM.open(Settings().with_(llm_model_path=str(gguf_path())), n_ctx=512)
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
        llm.close_sync()
    assert "nine" in heard.text.lower() or "9" in heard.text, heard
    loop_thread = threading.get_native_id()
    busy = {tid: after[tid] - before.get(tid, 0) for tid in after if after[tid] - before.get(tid, 0) >= 3}
    # Whisper, Piper and llama.cpp each kept at least one thread of their own busy (the loop's thread and BLAS
    # work on the loop's thread aside); none of them at the loop's priority, which stays as it was.
    workers = {tid: spent for tid, spent in busy.items() if tid not in existing}
    assert len(workers) >= 3, (busy, nice)
    assert {tid: nice[tid] for tid in workers if nice.get(tid, 0) < priority.DEFAULT_NICE} == {}, (workers, nice)
    assert nice[loop_thread] == loop_nice  # the loop (the media clock's thread) keeps its priority


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


@pytest.mark.parametrize("cores", [1, 2, 3, 4, 8, 16, 32])
def test_each_model_takes_every_core_alone_and_its_share_while_another_works(
        monkeypatch: pytest.MonkeyPatch, cores: int) -> None:
    monkeypatch.setattr(priority, "_cores", lambda: cores)
    alone = priority.speech_threads_now("stt")
    assert alone == priority.llm_threads() == min(cores, 4)
    with priority.working("stt"):
        assert priority.speech_threads_now("stt") == alone  # its own work does not count
        shared = priority.speech_threads_now("tts")
        assert 1 <= shared <= alone and priority.llm_threads() <= alone
        with priority.working("stt"):  # the multilingual Whisper beside the English one
            assert priority.speech_threads_now("stt") == shared
    with priority.working("llm"):
        assert priority.llm_threads() == alone and priority.speech_threads_now("tts") == shared
    with priority.working("embed"):
        assert priority.llm_threads() == max(1, alone // 2)
    assert priority.llm_threads() == alone
    if 2 <= cores <= 8:
        assert shared < alone  # a small machine: sharing means fewer threads (a big one has cores to spare)
    assert set(priority.speech_thread_choices()) == {alone, shared}


def test_fixed_thread_counts_are_never_adapted() -> None:
    priority.configure_threads(3, 5)
    with priority.working("stt"), priority.working("llm"):
        assert (priority.speech_threads_now("tts"), priority.llm_threads()) == (3, 5)
    assert priority.speech_thread_choices() == (3,)


@pytest.mark.parametrize(("speech", "llm"), [(-1, 0), (0, 65)])
def test_thread_counts_out_of_range_are_a_clear_configuration_error(speech: int, llm: int) -> None:
    with pytest.raises(ConfigError) as caught:
        priority.configure_threads(speech, llm)
    assert caught.value.field in ("speech_threads", "llm_threads")
    assert (priority._state["speech_threads"], priority._state["llm_threads"]) == (0, 0)  # nothing half-applied


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
