"""Capacity on real calls: N simultaneous callers into one Eva, and the largest N that still sounds right.

Real Asterisk, real pjsua2 callers (one process each), one isolated Eva with the embedded models (Whisper,
llama.cpp, Piper) and the demo agent.  For every N (``--calls 1,2,4,6,8``) N callers dial 100 with staggered
starts; each waits for the greeting and asks two questions from the demo agent's knowledge (the second once the
first reply is over), and every third caller talks over the first reply instead (barge-in).  Measured:

* answered turns (a reply heard within ``REPLY_WAIT_S`` of the question's end) out of the turns asked;
* voice-to-voice from the caller's side: end of the caller's speech → first audio of the reply in the caller's
  recording (p50, p95, max);
* outgoing pacing jitter: inter-arrival times of Eva's RTP packets at Asterisk's ports on ``lo`` (needs root),
  deviation from 20 ms (p99);
* Eva's CPU (core-seconds per call-second) and resident memory added per call;
* the per-stage medians from Eva's turn rows (ms after the caller's speech ended: speech recognised, first LLM
  token, first sentence, its first audio, first RTP frame): where the queueing is.

The targets (issue "Capacity"): every turn answered, voice-to-voice p95 ≤ 1.3 × the single-call p50 *of the
same run* up to 4 calls and ≤ 2.5 × up to 8, pacing jitter p99 ≤ 5 ms.  The largest N meeting them is printed;
ratios, not times, compare across these noisy machines.  ``--beyond`` then sets ``EVA_MAX_CALLS`` to that N and
dials N + 2: the two extra callers must hear the busy prompt within a second and the N admitted calls must
still meet the targets.

``--compare [decoding|priority|tts|threads|sharing]`` dials every N twice, interleaved: with one change off (how Eva ran
before it), then on; both tables are printed, each with its own single-call ratios.  ``decoding``: the embedded
model's speculative decoding and first-sentence priority; ``priority``: the model threads below the media clock
(``voicebot/media/priority.py``); ``tts``: Piper's earliest-playout-deadline-first order; ``threads``: each model's
threads sized to share the cores; ``sharing``: those three together.

Usage: ``.venv/bin/python bench/capacity.py [--calls 1,2,4,6,8] [--beyond] [--compare CHANGE]
[--json bench/results/capacity.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.latency import STAGES, LoopbackCapture, _write_json, prepare
from bench.stats import summary
from voicebot.audio import read_wav, voiced_regions

STAGGER_S = 0.6
"""Seconds between two callers' first dial (a burst of INVITEs in the same millisecond is not a real load)."""
REPLY_WAIT_S = 10.0
"""A question with no reply audio this long after it ended counts as unanswered."""
TARGET_RATIO = ((4, 1.3), (8, 2.5))
"""(up to N calls, p95 ≤ ratio × single-call p50)."""
JITTER_TARGET_MS = 5.0
BUSY_WITHIN_S = 1.0


@dataclass(frozen=True)
class Question:
    path: Path
    speech_end: float
    """Seconds into the file where the speech ends."""


def target_ratio(n: int) -> float:
    for upto, ratio in TARGET_RATIO:
        if n <= upto:
            return ratio
    return TARGET_RATIO[-1][1]


def turn_latencies(result: Any, questions: list[Question]) -> list[float | None]:
    """Per question the caller played: ms from the end of its speech to the first reply audio after it, or
    None when nothing came back within REPLY_WAIT_S."""
    heard = voiced_regions(read_wav(result.record_path))
    plays = [e for e in result.events if e.get("kind") == "play"]
    out: list[float | None] = []
    for event, question in zip(plays, questions, strict=False):
        asked_end = float(event["at"]) + question.speech_end - result.record_offset
        reply = next((start for start, _end in heard if start > asked_end), None)
        out.append(None if reply is None or reply - asked_end > REPLY_WAIT_S else (reply - asked_end) * 1000.0)
    return out


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


async def _round(n: int, settings: Any, workdir: Path, questions: list[Question], capture: LoopbackCapture,
                 runtime: Any, tag: str) -> dict[str, Any]:
    from voicebot.harness import free_udp_port
    from voicebot.sipcaller import Action, CallScript, place_call_async

    async def one(i: int) -> tuple[int, Any, list[Question]]:
        await asyncio.sleep(i * STAGGER_S)
        first, second = questions[(2 * i) % len(questions)], questions[(2 * i + 1) % len(questions)]
        barge = i % 3 == 2
        actions = (Action("play", when_quiet=0.8, path=str(first.path)),
                   # barge-in: talk over the first reply one second into it, else wait until it is over
                   Action("play", when_heard=1.0, path=str(second.path)) if barge
                   else Action("play", when_quiet=1.0, path=str(second.path)),
                   Action("hangup", when_quiet=2.0))
        script = CallScript(uri=f"sip:100@{settings.bind_host}:{settings.sip_port}", actions=actions,
                            record_path=str(workdir / f"{tag}-n{n}-call{i}.wav"), timeout=60,
                            bind_ip=settings.local_carrier_ip, bind_port=free_udp_port())
        return i, await place_call_async(script), [first, second]

    capture.arrivals.clear()
    first_turn = await asyncio.to_thread(_last_turn_id, runtime.engine)
    cpu0, wall0, rss0 = _cpu_seconds(), time.monotonic(), _rss_mb()
    peak = rss0
    gather = asyncio.gather(*(one(i) for i in range(n)))
    while not gather.done():
        await asyncio.sleep(0.5)
        peak = max(peak, _rss_mb())
    done = await gather
    cpu = _cpu_seconds() - cpu0
    latencies: list[float] = []
    asked = answered = 0
    call_seconds = 0.0
    busy_heard: list[float] = []
    for _i, result, asked_questions in done:
        if not result.connected:
            continue
        call_seconds += result.duration
        plays = [e for e in result.events if e.get("kind") == "play"]
        if not plays:  # refused: it heard the busy prompt and was hung up before asking anything
            regions = voiced_regions(read_wav(result.record_path))
            busy_heard.append(regions[0][0] + result.record_offset if regions else float("nan"))
            continue
        for value in turn_latencies(result, asked_questions):
            asked += 1
            if value is not None:
                answered += 1
                latencies.append(value)
    jitter = capture.jitter_ms()
    stages = await asyncio.to_thread(_stage_medians, runtime.engine, first_turn)
    return {
        "calls": n, "connected": sum(1 for _i, r, _q in done if r.connected), "turns_asked": asked,
        "turns_answered": answered, "voice_to_voice_ms": summary(latencies), "pacing_jitter_ms": summary(jitter),
        "eva_cpu_cores_per_call": round(cpu / call_seconds, 3) if call_seconds else float("nan"),
        "eva_rss_mb_added_per_call": round((peak - rss0) / n, 1), "wall_s": round(time.monotonic() - wall0, 1),
        "refused_first_audio_s": busy_heard, "stages_p50_ms": stages,
    }


def _last_turn_id(engine: Any) -> int:
    from sqlalchemy import func
    from sqlmodel import select

    from models import CallTurn
    from models.db import session_scope

    with session_scope(engine) as session:
        return int(session.exec(select(func.max(CallTurn.id))).one() or 0)


def _stage_medians(engine: Any, after_id: int) -> dict[str, float]:
    """p50 of each stage over the speech turns stored after turn ``after_id`` (this round's)."""
    from sqlmodel import col, select

    from models import CallTurn
    from models.db import session_scope

    with session_scope(engine) as session:
        turns = list(session.exec(select(CallTurn).where(col(CallTurn.id) > after_id, CallTurn.kind == "speech")))
        return {name.removesuffix("_ms"): summary([float(getattr(t, name)) for t in turns
                                                   if getattr(t, name) is not None])["p50"] for name in STAGES}


VARIANTS = {"before": False, "after": True}
"""``--compare``: each N is dialled twice, with the change compared off ("before" it) and on ("after"),
interleaved so both see the same machine."""
CHANGES = ("decoding", "priority", "tts", "threads", "sharing")
"""What ``--compare`` turns off for "before": ``decoding`` — the embedded model's speculative decoding and
first-sentence priority; ``priority`` — the model threads' lower priority, the short GIL switch interval and the
one-thread BLAS (``voicebot.media.priority``); ``tts`` — Piper's earliest-playout-deadline-first order (first
come, first served instead); ``threads`` — the models' threads sized to share the cores (before: Whisper, Piper and
the LLM each with a thread per core, up to 4); ``sharing`` — priority, tts and threads together."""
_MODEL_THREADS: set[int] = set()
_ALTERNATES: dict[str, Any] = {}
"""``--compare threads``: the models as they were ("before") and as they are, swapped in between rounds."""


def _swap_threads(runtime: Any, on: bool) -> None:
    import onnxruntime

    from voicebot.calls.admission import usable_cores
    from voicebot.media import priority
    from voicebot.stt.whisper import WhisperStt

    stt, tts = runtime.components["stt"], runtime.components["tts"]
    voice = tts.voice("")
    if not _ALTERNATES:
        settings = runtime.settings
        path = next(iter(voice._sessions.values()))._model_path
        _ALTERNATES.update(
            whisper_after=stt.english, sessions_after=voice._sessions,
            whisper_before=WhisperStt(settings.stt_model, settings.stt_compute_type,
                                      threads=min(4, usable_cores())),
            # Made on Piper's worker, as its own sessions are: its pool then has the same (lowered) priority.
            sessions_before={0: tts._worker.submit(0.0, lambda: onnxruntime.InferenceSession(
                path, sess_options=onnxruntime.SessionOptions(), providers=["CPUExecutionProvider"])).result()})
    stt.english = _ALTERNATES["whisper_after" if on else "whisper_before"]
    # Piper picks a session per sentence from these; "before" has one, ONNX Runtime's default (a spinning thread
    # per core).
    voice._sessions = _ALTERNATES["sessions_after" if on else "sessions_before"]
    voice._voice.session = next(iter(voice._sessions.values()))
    # The LLM takes its threads on its own thread before its next forward pass (EmbeddedLLM._fit_threads).
    priority.configure_threads(0, 0 if on else min(4, usable_cores()))


def _variant(runtime: Any, on: bool, change: str = "decoding") -> None:
    if change == "sharing":
        for part in ("threads", "priority", "tts"):  # threads first: the models it swaps in get reniced too
            _variant(runtime, on, part)
        return
    if change == "priority":
        from voicebot.media import priority

        if not _MODEL_THREADS:  # the threads the models made at the lowered priority (all exist after warm-up)
            _MODEL_THREADS.update(t for t, n in priority.thread_nice().items() if n == priority.model_nice())
        wanted = priority.model_nice() if on else 0
        priority.renice(_MODEL_THREADS, wanted)
        nice = priority.thread_nice()
        if not _MODEL_THREADS or any(nice.get(t, wanted) != wanted for t in _MODEL_THREADS):
            # Raising a thread's priority back needs root (CAP_SYS_NICE); without it "before" would not be before.
            raise SystemExit("--compare priority needs Linux and the right to raise thread priorities (root)")
        priority.share(on)
        return
    if change == "tts":
        runtime.components["tts"].deadline_first = on
        return
    if change == "threads":
        _swap_threads(runtime, on)
        return
    llm = runtime.components.get("llm")
    if hasattr(llm, "first_sentences_first"):
        llm.speculative = on
        llm.first_sentences_first = on


def _grade(rounds: list[dict[str, Any]]) -> float:
    """Ratios against this variant's own single-call p50; returns that p50."""
    single = next((r["voice_to_voice_ms"]["p50"] for r in rounds if r["calls"] == 1), float("nan"))
    for r in rounds:
        r["p95_over_single_p50"] = round(r["voice_to_voice_ms"]["p95"] / single, 2)
        r["target_ratio"] = target_ratio(r["calls"])
        r["meets_targets"] = bool(
            r["turns_answered"] == r["turns_asked"] == 2 * r["calls"]
            and r["p95_over_single_p50"] <= r["target_ratio"]
            and r["pacing_jitter_ms"]["p99"] <= JITTER_TARGET_MS)
    return float(single)


async def run(counts: list[int], out: Path, beyond: bool, compare: str = "") -> dict[str, Any]:
    from voicebot.asterisk.process import Asterisk
    from voicebot.calls.admission import Admission
    from voicebot.harness import isolated_settings
    from voicebot.server import EvaRuntime

    workdir = Path(tempfile.mkdtemp(prefix="eva-capacity-"))
    # Admission off for the sweep (a capacity far above any N): the sweep is what sets the default.
    settings = isolated_settings(workdir / "data").with_(llm="embedded", record_calls=False, max_calls=1000)
    print(f"[capacity] preparing an isolated Eva in {workdir} ...", flush=True)
    engine, prompts = await prepare(settings, workdir)
    questions = [Question(path, speech_end) for path, speech_end in prompts]
    asterisk = Asterisk(settings)
    asterisk.start()
    runtime = EvaRuntime(settings, with_api=False)
    rounds: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    try:
        await runtime.start()
        media = range(settings.media_port_start, settings.media_port_end + 1)
        rtp = range(settings.rtp_port_start, settings.rtp_port_end + 1)
        with LoopbackCapture(media, rtp) as capture:
            print("[capacity] warm-up call ...", flush=True)
            await _round(1, settings, workdir, questions, capture, runtime, "warmup")
            before: list[dict[str, Any]] = []
            for n in counts:
                for name in ("before", "after") if compare else ("after",):
                    _variant(runtime, VARIANTS[name], compare or "decoding")
                    print(f"[capacity] {n} simultaneous call(s){f' ({name})' if compare else ''} ...", flush=True)
                    result = await _round(n, settings, workdir, questions, capture, runtime, "sweep")
                    (rounds if name == "after" else before).append(result)
                    v2v = result["voice_to_voice_ms"]
                    print(f"[capacity]   answered {result['turns_answered']}/{result['turns_asked']} turns, "
                          f"voice-to-voice p50 {v2v['p50']:.0f} p95 {v2v['p95']:.0f} max {v2v['max']:.0f} ms, "
                          f"jitter p99 {result['pacing_jitter_ms']['p99']:.2f} ms", flush=True)
            _variant(runtime, True, compare or "decoding")
            single = _grade(rounds)
            passing = [r["calls"] for r in rounds if r["meets_targets"]]
            best = max(passing) if passing else 0
            report = {"single_call_p50_ms": single, "largest_n_meeting_targets": best, "rounds": rounds}
            if before:
                report["before"] = {"single_call_p50_ms": _grade(before), "rounds": before,
                                    "change": compare or "decoding"}
            if beyond and best:
                assert runtime.voice is not None
                runtime.voice.admission = Admission(best)
                print(f"[capacity] EVA_MAX_CALLS={best}, {best + 2} callers ...", flush=True)
                over = await _round(best + 2, settings, workdir, questions, capture, runtime, "beyond")
                heard = over["refused_first_audio_s"]
                over["refused"] = runtime.voice.admission.refused
                over["refused_heard_busy_within_1s"] = sum(1 for s in heard if s <= BUSY_WITHIN_S)
                over["admitted_p95_over_single_p50"] = round(over["voice_to_voice_ms"]["p95"] / single, 2)
                report["beyond_capacity"] = over
    finally:
        await runtime.close()
        asterisk.stop()
        engine.dispose()
    report["settings"] = {"cpus": os.cpu_count(), "model": Path(settings.llm_model_path).name,
                          "stagger_s": STAGGER_S, "end_of_turn_ms": settings.end_of_turn_ms}
    await asyncio.to_thread(_write_json, out, report)
    return report


def print_table(report: dict[str, Any]) -> None:
    if "before" in report:
        change = report["before"].get("change", "decoding")
        off = {"decoding": "speculative decoding and first-sentence priority",
               "priority": "model threads at the loop's priority, 5 ms GIL switch interval, NumPy's BLAS pool",
               "tts": "speech synthesized first come, first served",
               "threads": "Whisper, Piper and the LLM each with a thread per core",
               "sharing": "none of priority, deadline-first synthesis and shared-machine threads"}[change]
        print(f"\n=== before: {off}")
        _print_rounds({**report["before"], "largest_n_meeting_targets": "-"})
        print("\n=== after")
    _print_rounds(report)


def _print_rounds(report: dict[str, Any]) -> None:
    print(f"\nSingle-call p50: {report['single_call_p50_ms']:.0f} ms   (targets: p95 ≤ 1.3× up to 4 calls, ≤ 2.5× up "
          f"to 8; jitter p99 ≤ {JITTER_TARGET_MS:.0f} ms)")
    print("calls  answered   v2v p50   p95    max   p95/1-call  jitter p99  cpu/call  MB/call  meets")
    for r in report["rounds"]:
        v = r["voice_to_voice_ms"]
        print(f"{r['calls']:>5}  {r['turns_answered']:>3}/{r['turns_asked']:<4} {v['p50']:>8.0f} {v['p95']:>6.0f} "
              f"{v['max']:>6.0f}   {r['p95_over_single_p50']:>6.2f}×    {r['pacing_jitter_ms']['p99']:>7.2f}   "
              f"{r['eva_cpu_cores_per_call']:>7.2f}  {r['eva_rss_mb_added_per_call']:>7.1f}  "
              f"{'yes' if r['meets_targets'] else 'no'}")
    print("Stage p50 (ms after the caller's speech ended): " + ", ".join(report["rounds"][0]["stages_p50_ms"]))
    for r in report["rounds"]:
        print(f"{r['calls']:>5}  " + "  ".join(f"{v:>6.0f}" for v in r["stages_p50_ms"].values()))
    print(f"Largest N meeting the targets: {report['largest_n_meeting_targets']}")
    over = report.get("beyond_capacity")
    if over:
        print(f"Beyond capacity ({over['calls']} callers): {over['refused']} refused, "
              f"{over['refused_heard_busy_within_1s']} heard the busy prompt within {BUSY_WITHIN_S:.0f} s; admitted "
              f"calls answered {over['turns_answered']}/{over['turns_asked']}, p95 "
              f"{over['admitted_p95_over_single_p50']:.2f}× the single-call p50")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", default="1,2,4,6,8", help="comma-separated numbers of simultaneous calls")
    parser.add_argument("--beyond", action="store_true",
                        help="then dial capacity + 2 with EVA_MAX_CALLS at the largest passing N")
    parser.add_argument("--compare", nargs="?", const="decoding", default="", choices=CHANGES,
                        help="dial each N twice, the change off then on: decoding (speculative decoding and "
                             "first-sentence priority, the default), priority (model threads below the media "
                             "clock), tts (synthesis by playout deadline), threads (model threads sized to "
                             "share the cores) or sharing (those three)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "capacity.json")
    args = parser.parse_args()
    counts = sorted({int(c) for c in args.calls.split(",")} | {1})
    report = asyncio.run(run(counts, args.json, args.beyond, args.compare))
    print_table(report)
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
