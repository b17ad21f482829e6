"""Eva's settings: one immutable object built from ``EVA_*`` environment variables and generated secrets.

Defaults are embedded and secure: everything binds to 127.0.0.1, secrets are generated at setup into
``<data_dir>/secrets.env`` (mode 0600, never committed, never printed).  ``Settings.load()`` is the only place
that reads the environment, so tests build a ``Settings`` directly with the values they need.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from voicebot.errors import ConfigError

_APP_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
"""An ARI application name: it is written into the dialplan (a comma or a parenthesis would split it)."""
PROJECT_ROOT = Path(__file__).resolve().parent.parent
"""The checkout (or site-packages) that holds the ``voicebot`` package."""


def _default_data_dir() -> Path:
    # A checkout keeps its state beside the code (ignored by git); an installed package uses /var/lib/eva.
    if (PROJECT_ROOT / "pyproject.toml").exists():
        return PROJECT_ROOT / "var"
    return Path("/var/lib/eva")


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a ``KEY=value`` file (comments and blank lines ignored).  Missing file → empty dict."""
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


@dataclass(frozen=True)
class Settings:
    """Every tunable of Eva.  Field ``foo_bar`` is read from ``EVA_FOO_BAR``."""

    data_dir: Path = field(default_factory=_default_data_dir)
    log_level: str = "INFO"

    # --- Asterisk (runs in a Debian-unstable chroot; see voicebot/asterisk) ---
    asterisk_root: Path = Path("/var/cache/eva/asterisk-root")
    bind_host: str = "127.0.0.1"
    """Address of ARI, AMI and Asterisk's HTTP server.  Keep it on loopback (or a private management network)."""
    sip_bind_host: str = ""
    """Address SIP listens on (empty: bind_host).  Set it to the public address a real carrier reaches."""
    sip_port: int = 5060
    ari_port: int = 8088
    ami_port: int = 5038
    rtp_port_start: int = 10000
    rtp_port_end: int = 10999
    ari_app: str = "eva"
    """This worker's ARI application name: one process per name, unique among the workers sharing a database
    (see ``ari_apps``)."""
    ari_apps: str = ""
    """Every Eva worker sharing this Asterisk, as their comma-separated ARI application names (this worker's
    among them).  Calls go to one of them at random and on to the next when a worker is down; a worker closes
    the calls a dead peer left behind.  Empty: this worker alone (``ari_app``)."""
    ari_user: str = "eva"
    ari_password: str = ""
    ami_user: str = "eva"
    ami_password: str = ""
    local_carrier_ip: str = "127.0.0.1"
    """Source address accepted as the local 'carrier' trunk (tests and `eva call` dial in from here)."""
    asterisk_boot_timeout: float = 60.0
    manage_asterisk: bool = True
    """True: ``eva run`` starts/stops Asterisk in the local chroot.  False: Asterisk runs elsewhere (a container,
    another host); Eva only renders its configuration into ``<data_dir>/asterisk`` and talks ARI/AMI to it."""
    asterisk_instance_path: str = ""
    """Where Asterisk sees ``<data_dir>/asterisk`` (empty: ``/eva/<id>`` inside the local chroot)."""
    asterisk_host: str = ""
    """Host of ARI/AMI when Asterisk runs elsewhere (empty: bind_host)."""
    asterisk_uid: int = -1
    asterisk_gid: int = -1
    """When Asterisk runs elsewhere (a container sharing the instance folder), the uid/gid it runs as, so Eva gives
    it its files explicitly (-1: the local image's asterisk user)."""
    dialplan_dial_targets: str = ""
    """Comma-separated dial strings (e.g. ``PJSIP/reception``) that IVR designers may use in ``Dial()``; besides
    them designers may only Dial ``Local/<exten>@<context>`` of the dialplan.  Admins may dial anything."""
    trunk_qualify_s: int = 60
    """Seconds between the SIP OPTIONS pings (qualify) Asterisk sends each trunk: how soon a dead trunk is seen."""
    trunk_resync_s: float = 30.0
    """Seconds between full re-reads of every trunk's state through AMI, beside the events (heals a missed one)."""
    channel_capacity: int = 0
    """Calls this system carries at once (trunk channels, CPU): campaigns keep their ``reserve_inbound`` of them
    free for callers.  0: unknown, and the reserve is not applied."""

    max_calls: int = 0
    """Voice calls this worker carries at once; an inbound caller beyond it hears the busy prompt and is hung up,
    so the calls in progress keep their latency.  0: two per CPU core (see ``voicebot/calls/admission.py``)."""

    model_nice: int = 10
    """Nice value of the model threads (Whisper, llama.cpp, Piper, embedder): every call's media clock runs
    before them on a busy machine (``voicebot/media/priority.py``).  0 leaves them at the process's priority."""

    speech_threads: int = 0
    """Threads Whisper and Piper each use; 0: every core (up to 4) while the model works alone, a third of them
    while another model works (two thread teams spinning on the same cores halve both:
    ``voicebot/media/priority.py``)."""
    llm_threads: int = 0
    """Threads of the embedded LLM; 0: all cores (up to 4) while it works alone, half while a speech model works."""

    # --- media transport (ExternalMedia RTP between Asterisk and Eva) ---
    media_host: str = "127.0.0.1"
    media_port_start: int = 20000
    media_port_end: int = 20999
    media_format: str = "ulaw"
    """ulaw (8 kHz, default) | slin16.  See voicebot/media/transport.py for why slin16 is not the default."""

    # --- speech ---
    vad_aggressiveness: int = 2
    barge_in_ms: int = 60
    """Caller speech this long during bot playout stops the bot (shorter: a click or a cough)."""
    end_of_turn_ms: int = 400
    """Silence after caller speech that ends the caller's turn."""
    stt_model: str = ""
    """Path to a CTranslate2 Whisper model for English agents; empty → the packaged tiny.en."""
    stt_multilingual_model: str = ""
    """Path to a multilingual CTranslate2 Whisper model for agents in other languages; empty → the packaged
    Whisper base (assembled by ``eva setup`` into <data_dir>/models/whisper-base)."""
    stt_compute_type: str = "int8"
    tts_voice: str = ""
    """Path to a Piper .onnx voice; empty → the packaged en_US-joe-medium."""
    record_calls: bool = True
    max_call_seconds: float = 3600.0
    """A call is ended politely after this long (a stuck call never holds resources for ever)."""
    flow_resume_minutes: float = 15.0
    """A caller whose call dropped mid-flow and who calls back from the same verified number within this many
    minutes continues at the same step (0: every call starts its flow afresh)."""

    # --- language model ---
    llm: str = "auto"
    """auto | ollama | embedded"""
    ollama_url: str = "http://127.0.0.1:11434"
    ollama_model: str = "llama3.2"
    ollama_embed_model: str = "nomic-embed-text"
    ollama_timeout: float = 60.0
    llm_model_path: str = ""
    """GGUF path for the embedded backend; empty → the packaged Qwen2.5-Coder-0.5B-Instruct (verified at setup)."""
    llm_speculative: bool = True
    """Embedded model: guess the next tokens from the prompt and check several per forward pass
    (voicebot.llm.speculative).  The same replies in fewer passes; off only to measure what it buys."""
    llm_timeout: float = 20.0

    # --- knowledge ---
    database_url: str = ""
    """Any SQLAlchemy URL; empty → SQLite file under data_dir."""
    chroma_url: str = ""
    """Empty → embedded Chroma under data_dir; else http://host:port of a Chroma server."""
    embedder: str = "local"
    """local (sentence-transformers all-MiniLM-L6-v2) | ollama"""
    chunk_size: int = 500
    chunk_overlap: int = 50
    max_upload_mb: int = 50

    extract_memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) of the child process that reads one uploaded document."""
    extract_cpu_seconds: int = 60
    """CPU-time limit (RLIMIT_CPU) of that process; beyond it the document fails as document_too_complex."""
    extract_timeout: float = 120.0
    """Wall-clock limit for reading one document; the reader process is killed after it."""
    max_pdf_pages: int = 2000
    """PDFs with more pages are refused (document_too_complex), not silently cut."""

    # --- operations ---
    backup_every_hours: float = 24.0
    """``eva run`` backs the database up this often into ``<data_dir>/backups`` (0: never)."""
    backup_keep: int = 7
    """How many scheduled backups are kept (the oldest are deleted)."""
    supervise_interval: float = 2.0
    """Seconds between checks that the local Asterisk is alive (it is restarted when it is not)."""
    log_max_mb: int = 50
    """Asterisk's logs are rotated past this size; ``log_keep`` old files are kept."""
    log_keep: int = 5
    log_file: str = ""
    """Also write Eva's log to this file, rotated past ``log_max_mb`` (empty: standard error only)."""

    # --- admin API ---
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_cors_origins: str = ""
    jwt_secret: str = ""
    access_token_minutes: int = 15
    refresh_token_days: int = 7
    open_signup: bool = False
    """Anyone may create an account (role ``pending``: it reads nothing until an admin grants a role)."""
    api_trusted_proxies: str = ""
    """Comma-separated addresses or CIDRs of reverse proxies whose X-Forwarded-For is believed (login limits,
    /metrics); empty: the header is ignored and the socket's peer is the client."""
    metrics_token: str = ""
    """Bearer token a Prometheus scraper must send to /metrics; empty: only loopback clients not coming
    through a proxy may scrape."""
    password_hash_threads: int = 1
    """Threads that run bcrypt (logins, password changes): its own pool, never the one call setup uses."""
    password_hash_queue: int = 8
    """bcrypt jobs that may wait for a thread; beyond it logins get 429 at once."""
    health_cache_s: float = 5.0
    """Seconds one round of dependency probes (ARI, AMI, LLM, Chroma, database) serves /api/v1/health."""

    # --- channels ---
    whatsapp_token: str = ""
    whatsapp_phone_number_id: str = ""
    whatsapp_verify_token: str = ""
    whatsapp_app_secret: str = ""
    whatsapp_api_url: str = "https://graph.facebook.com/v21.0"
    whatsapp_agent: str = "demo"
    """Name of the agent that answers WhatsApp messages."""
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from: str = ""
    smtp_starttls: bool = True
    smtp_ssl: bool = False
    """SMTP over TLS from the first byte (SMTPS) on any port; port 465 always is.  Otherwise STARTTLS (above)."""
    email_ca_file: str = ""
    """PEM file of the CA certificates that sign the IMAP and SMTP servers' certificates (a private CA, a
    self-signed server); empty: the system's trusted CAs.  Certificates and host names are always verified."""
    imap_host: str = ""
    imap_port: int = 993
    imap_user: str = ""
    imap_password: str = ""
    imap_ssl: bool = True
    imap_poll_interval: float = 30.0
    """Seconds between checks of the IMAP inbox for unseen mail."""
    email_agent: str = "demo"
    """Name of the agent that answers e-mail."""
    email_max_bytes: int = 10 * 1024 * 1024
    """Largest inbound e-mail read, in bytes (checked with RFC822.SIZE before it is downloaded); a larger one is
    marked seen without an answer and logged."""
    email_attachment_max_bytes: int = 5 * 1024 * 1024
    """Largest attachment of an inbound e-mail kept (decoded bytes, under ``media_dir``); a larger one is only listed
    on the message (``note: too_large``).  At most 20 attachments of a mail are kept, together no more than
    ``email_max_bytes``.  Also the most the files of one e-mail sent through ``/email/send`` may be together."""
    analysis: bool = True
    """Give each contact's message (on every channel, call transcripts too) a sentiment and one of the admin's
    categories with the local LLM, in the background while no call or chat is using it (``voicebot.analysis``)."""
    email_parse_timeout: float = 10.0
    """CPU seconds one inbound e-mail may take to parse (in a niced child process; a child that gives no answer in
    6 times that, at least a minute, is killed); a slower one is refused and logged."""
    email_replies_per_sender_hour: int = 20
    """Inbound e-mails answered per sender per hour (all workers together); the excess waits unseen and is answered
    in a later hour (logged).  0: no limit."""
    email_replies_per_hour: int = 200
    """Inbound e-mails answered per hour from senders not answered before this hour (all workers together; From is
    unauthenticated, so invented senders spend only this budget); the excess waits unseen and is answered in a
    later hour (logged).  0: no limit."""
    email_replies_known_per_hour: int = 200
    """Inbound e-mails answered per hour from known senders (answered before this hour), counted apart from
    ``email_replies_per_hour`` so a flood of invented senders cannot silence real customers.  0: no limit."""

    # ------------------------------------------------------------------ derived paths
    @property
    def secrets_file(self) -> Path:
        return self.data_dir / "secrets.env"

    @property
    def asterisk_dir(self) -> Path:
        """Host side of the chroot's /eva mount: rendered config, spool, logs, recordings."""
        return self.data_dir / "asterisk"

    @property
    def recordings_dir(self) -> Path:
        return self.asterisk_dir / "spool" / "recording"

    @property
    def sounds_dir(self) -> Path:
        return self.asterisk_dir / "sounds"

    @property
    def media_dir(self) -> Path:
        """Files contacts sent or were sent (WhatsApp media, e-mail attachments), one folder per conversation."""
        return self.data_dir / "media"

    @property
    def backup_dir(self) -> Path:
        return self.data_dir / "backups"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def voices_dir(self) -> Path:
        """Piper voices added with ``eva voice add`` (one per language is enough; see voicebot.tts.voices)."""
        return self.data_dir / "voices"

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'eva.db'}"

    @property
    def worker_apps(self) -> tuple[str, ...]:
        """The ARI applications of every worker sharing this Asterisk (``ari_apps``), this worker's included."""
        names = tuple(dict.fromkeys(n.strip() for n in self.ari_apps.split(",") if n.strip())) or (self.ari_app,)
        for name in (self.ari_app, *names):
            if not _APP_NAME_RE.match(name):
                raise ConfigError(f"ARI application name {name!r}: use 1-40 letters, digits, '-' or '_'",
                                  field="ari_apps")
        if self.ari_app not in names:
            raise ConfigError(f"EVA_ARI_APPS must list this worker's own EVA_ARI_APP ({self.ari_app!r})",
                              field="ari_apps")
        return names

    @property
    def ari_url(self) -> str:
        return f"http://{self.asterisk_host or self.bind_host}:{self.ari_port}/ari"

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, environ: dict[str, str] | None = None) -> Settings:
        """Build settings from the environment, then fill secrets from ``<data_dir>/secrets.env``."""
        env = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f"EVA_{f.name.upper()}"
            if key in env:
                values[f.name] = _coerce(f.name, f.type, env[key])
        settings = cls(**values)
        secrets = read_env_file(settings.secrets_file)
        fill: dict[str, Any] = {}
        for f in fields(cls):
            key = f"EVA_{f.name.upper()}"
            if key in secrets and key not in env:
                fill[f.name] = _coerce(f.name, f.type, secrets[key])
        return replace(settings, **fill) if fill else settings

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _coerce(name: str, type_name: Any, raw: str) -> Any:
    kind = str(type_name)
    try:
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "Path":
            return Path(raw).expanduser()
    except ValueError as exc:
        raise ConfigError(f"EVA_{name.upper()} has an invalid value for a {kind}", field=name) from exc
    return raw
