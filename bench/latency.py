"""Voice-to-voice latency on real calls: real Asterisk, real pjsua2 callers, Eva with the embedded models.

For every call the caller waits for the greeting, asks one question from the demo agent's knowledge and records
what it hears.  Reported:

* voice-to-voice latency from the caller's side: end of the caller's speech → first audio of the reply in the
  caller's recording (p50, p95);
* the per-stage breakdown from the turn rows Eva stored (ms after the caller's speech ended);
* outgoing pacing jitter: inter-arrival times of Eva's RTP packets at Asterisk's port, captured on the
  loopback interface with a raw socket (needs root), deviation from 20 ms (p50, p95, p99).

* prompt tokens the embedded model evaluated per turn (p50, p95), from the reply messages' timings.

``--models default,gemma`` runs the whole benchmark once per model in the same process and prints the tables
side by side (``default`` is the installed Qwen2.5 0.5B Instruct, ``default-plain`` the same without speculative
decoding, ``gemma`` the Gemma 3 270M baseline, or a GGUF path).

Usage: ``.venv/bin/python bench/latency.py [--calls 10] [--models default,gemma] [--json bench/results/latency.json]``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stats import summary
from voicebot.audio import read_wav, voiced_regions, write_wav

QUESTIONS = [
    "What are your opening hours on Saturday?",
    "How much does a flat tire repair cost?",
    "What is your address?",
    "Are you open on Sunday?",
    "How much does it cost to rent a bike?",
    "What does a basic bike service cost?",
    "What is your phone number?",
    "When do you open on Monday?",
    "Is there bike parking at the shop?",
    "What time do you close on Friday?",
]
STAGES = ("stt_done_ms", "llm_first_token_ms", "first_sentence_ready_ms", "tts_first_audio_ms",
          "first_frame_out_ms")


class LoopbackCapture:
    """Arrival times of UDP packets from Eva's media ports to Asterisk's RTP ports, read off ``lo``."""

    def __init__(self, src_ports: range, dst_ports: range) -> None:
        self.src_ports, self.dst_ports = src_ports, dst_ports
        self.arrivals: dict[tuple[int, int], list[float]] = {}
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, name="rtp-capture", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, address = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if address[2] == socket.PACKET_OUTGOING:
                continue  # loopback shows every packet twice: keep the delivery, not the send
            now = time.monotonic()
            if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
                continue
            ihl = (frame[14] & 0x0F) * 4
            src, dst = struct.unpack_from("!HH", frame, 14 + ihl)
            if src in self.src_ports and dst in self.dst_ports:
                self.arrivals.setdefault((src, dst), []).append(now)

    def __enter__(self) -> LoopbackCapture:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join()
        self.sock.close()

    def jitter_ms(self) -> list[float]:
        deviations: list[float] = []
        for times in self.arrivals.values():
            deltas = [(b - a) * 1000.0 for a, b in itertools.pairwise(times)]
            deviations += [abs(d - 20.0) for d in deltas[5:]]  # skip stream start-up
        return deviations


async def run(calls: int, out: Path, end_of_turn_ms: int | None = None, model: str = "",
              speculative: bool = True) -> dict[str, object]:
    from sqlmodel import select

    from models import CallTurn, Message
    from models.db import session_scope
    from voicebot.asterisk.process import Asterisk
    from voicebot.harness import free_udp_port, isolated_settings
    from voicebot.server import EvaRuntime
    from voicebot.sipcaller import Action, CallScript, place_call_async

    workdir = Path(tempfile.mkdtemp(prefix="eva-bench-"))
    settings = isolated_settings(workdir / "data").with_(llm="embedded", record_calls=False,
                                                         llm_speculative=speculative)
    if model:
        settings = settings.with_(llm_model_path=model)
    if end_of_turn_ms is not None:
        settings = settings.with_(end_of_turn_ms=end_of_turn_ms)
    print(f"[bench] preparing an isolated Eva in {workdir} ...", flush=True)
    engine, prompts = await prepare(settings, workdir)
    asterisk = Asterisk(settings)
    asterisk.start()
    runtime = EvaRuntime(settings, with_api=False)
    results: list[dict[str, float]] = []
    try:
        await runtime.start()
        media = range(settings.media_port_start, settings.media_port_end + 1)
        rtp = range(settings.rtp_port_start, settings.rtp_port_end + 1)
        with LoopbackCapture(media, rtp) as capture:
            for n in range(-1, calls):  # call -1 warms up (first search, first generation)
                path, speech_end = prompts[max(n, 0) % len(prompts)]
                ask_at = 5.0
                script = CallScript(uri=f"sip:100@{settings.bind_host}:{settings.sip_port}",
                                    actions=(Action("play", at=ask_at, path=str(path)),),
                                    record_path=str(workdir / f"call{n}.wav"), timeout=ask_at + 9,
                                    bind_ip=settings.local_carrier_ip, bind_port=free_udp_port())
                result = await place_call_async(script)
                heard = read_wav(result.record_path)
                asked_end = result.events[0]["at"] + speech_end - result.record_offset
                reply = [r for r in voiced_regions(heard) if r[0] > asked_end]
                v2v = (reply[0][0] - asked_end) * 1000.0 if reply else float("nan")
                if n < 0:
                    capture.arrivals.clear()
                    continue
                results.append({"call": n, "voice_to_voice_ms": v2v})
                print(f"[bench] call {n + 1}/{calls}: voice-to-voice {v2v:.0f} ms", flush=True)
        jitter = capture.jitter_ms()
        with session_scope(engine) as session:
            turns = list(session.exec(select(CallTurn).where(CallTurn.kind == "speech")))[1:]  # skip warm-up
        stages = {name: summary([float(getattr(t, name)) for t in turns if getattr(t, name) is not None])
                  for name in STAGES}
        replies = list(session.exec(select(Message).where(Message.role == "assistant")))[1:]
        evaluated = [float(m.timings["prompt_tokens_evaluated"]) for m in replies
                     if m.timings and "prompt_tokens_evaluated" in m.timings]
    finally:
        await runtime.close()
        asterisk.stop()
        engine.dispose()
    v2v_values = [r["voice_to_voice_ms"] for r in results if r["voice_to_voice_ms"] == r["voice_to_voice_ms"]]
    report: dict[str, object] = {
        "calls": calls, "answered_turns": len(v2v_values),
        "voice_to_voice_ms": summary(v2v_values),
        "stages_ms_after_speech_end": stages,
        "pacing_jitter_ms": summary(jitter),
        "prompt_tokens_evaluated": summary(evaluated),
        "model": Path(settings.llm_model_path).name,
        "settings": {"end_of_turn_ms": settings.end_of_turn_ms, "barge_in_ms": settings.barge_in_ms,
                     "media_format": settings.media_format, "llm": settings.llm, "cpus": os.cpu_count(),
                     "llm_speculative": settings.llm_speculative},
        "per_call": results,
    }
    await asyncio.to_thread(_write_json, out, report)
    return report


async def prepare(settings: Any, workdir: Path) -> tuple[Any, list[tuple[Path, float]]]:
    """An isolated Eva's data (prompts, schema, the demo agent and its knowledge) and the questions as WAV files
    with where each one's speech ends: (engine, [(path, seconds)])."""
    from models.db import make_engine, upgrade
    from voicebot.agent.demo import seed_demo_knowledge, seed_demo_rows
    from voicebot.setup import _prompt_run
    from voicebot.tts.piper import PiperTts

    _prompt_run(settings)
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    await seed_demo_knowledge(settings, engine, await asyncio.to_thread(seed_demo_rows, engine))
    tts = PiperTts()
    prompts = []
    for i, text in enumerate(QUESTIONS):
        path = workdir / f"q{i}.wav"
        audio = tts.synthesize_blocking(text, 16000)
        write_wav(path, audio)
        prompts.append((path, voiced_regions(audio)[-1][1]))
    return engine, prompts


def _write_json(out: Path, report: dict[str, object]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


def print_table(report: dict[str, object]) -> None:
    def row(name: str, s: dict[str, float]) -> str:
        return f"  {name:<34} {s['p50']:>8.0f} {s['p95']:>8.0f} {int(s['n']):>5}"

    v2v = report["voice_to_voice_ms"]
    assert isinstance(v2v, dict)
    print("\nVoice-to-voice latency (ms)           p50      p95     n")
    print(row("end of caller speech → bot audio", v2v))
    print("Stages (ms after the caller's speech ended)")
    stages = report["stages_ms_after_speech_end"]
    assert isinstance(stages, dict)
    for name, s in stages.items():
        print(row(name.removesuffix("_ms"), s))
    jitter = report["pacing_jitter_ms"]
    assert isinstance(jitter, dict)
    print("Outgoing pacing: |inter-arrival − 20 ms| (ms)")
    print(f"  p50 {jitter['p50']:.2f}  p95 {jitter['p95']:.2f}  p99 {jitter['p99']:.2f}  max {jitter['max']:.2f}"
          f"  over {int(jitter['n'])} packets")
    tokens = report.get("prompt_tokens_evaluated")
    if isinstance(tokens, dict) and tokens["n"]:
        print(f"Prompt tokens evaluated per turn: p50 {tokens['p50']:.0f}  p95 {tokens['p95']:.0f}"
              f"  over {int(tokens['n'])} turns")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--end-of-turn-ms", type=int, default=None, help="override EVA_END_OF_TURN_MS")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "latency.json")
    parser.add_argument("--models", default="default",
                        help="comma-separated: default (Qwen), default-plain (Qwen without speculative decoding), "
                             "gemma (baseline) or GGUF paths; one run each")
    args = parser.parse_args()
    from voicebot.config import Settings
    from voicebot.llm.embedded import GEMMA_GGUF_NAME, default_gguf_path

    installed = Settings.load()
    reports = []
    for name in args.models.split(","):
        model = {"default": str(default_gguf_path(installed)), "default-plain": str(default_gguf_path(installed)),
                 "gemma": str(installed.models_dir / GEMMA_GGUF_NAME)}.get(name, name)
        speculative = name != "default-plain"
        stem = Path(model).stem + ("" if speculative else "-plain")
        out = args.json if name == "default" else args.json.with_name(f"{args.json.stem}-{stem}.json")
        reports.append((out, asyncio.run(run(args.calls, out, args.end_of_turn_ms, str(Path(model).resolve()),
                                             speculative))))
    for out, report in reports:
        options = report["settings"]
        assert isinstance(options, dict)
        plain = "" if options.get("llm_speculative", True) else " (speculative decoding off)"
        print(f"\n=== model {report['model']}{plain}")
        print_table(report)
        print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
