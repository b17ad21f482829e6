"""A small in-process metrics registry, rendered in the Prometheus text exposition format at ``/metrics``.

Why not ``prometheus_client``: Eva needs a dozen series, no push gateway and no multiprocess mode; a hundred
lines keep the dependency list short and the behaviour obvious.  Every metric is thread-safe (the voice loop
updates some of them from executor threads).

The voice loop, the agent core and the knowledge base import the module-level metrics below and update them::

    from voicebot import metrics
    metrics.CALLS_ACTIVE.inc()
    metrics.TURN_STAGE_SECONDS.observe(0.42, stage="stt", agent=metrics.agent_label("demo"))

"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

LabelKey = tuple[str, ...]

DEFAULT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
"""Seconds; tuned for voice turn stages (a good turn is well under a second, a bad one several)."""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _labels_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_RE.match(label) or label == "le":
                raise ValueError(f"invalid label name {label!r}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelKey:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[name]) for name in self.labelnames)

    def _matches(self, key: LabelKey, labels: dict[str, str]) -> bool:
        """Whether the series ``key`` has the given labels (some of them: the others may be anything)."""
        unknown = set(labels) - set(self.labelnames)
        if unknown:
            raise ValueError(f"{self.name} has no labels {sorted(unknown)}")
        return all(key[self.labelnames.index(name)] == str(value) for name, value in labels.items())

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.documentation}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A value that only goes up (resets only when the process restarts)."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter cannot decrease")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """The series with these labels; labels left out are summed over."""
        with self._lock:
            return sum(v for key, v in self._values.items() if self._matches(key, labels))

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        return [f"{self.name}{_labels_text(self.labelnames, key)} {_format_value(v)}" for key, v in items]


class Gauge(_Metric):
    """A value that goes up and down.  ``set_function`` makes it computed at scrape time instead."""

    kind = "gauge"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self._values: dict[LabelKey, float] = {}
        self._function: Callable[[], float] | None = None

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        self.inc(-amount, **labels)

    def remove(self, **labels: str) -> None:
        """Drop the series with these labels (what it measured is gone, e.g. a deleted trunk)."""
        key = self._key(labels)
        with self._lock:
            self._values.pop(key, None)

    def set_function(self, function: Callable[[], float] | None) -> None:
        """Compute the (label-less) value when scraped; ``None`` returns to stored values."""
        if self.labelnames:
            raise ValueError("only a gauge without labels can be computed")
        self._function = function

    def value(self, **labels: str) -> float:
        if self._function is not None:
            return float(self._function())
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        if self._function is not None:
            return [f"{self.name} {_format_value(float(self._function()))}"]
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        return [f"{self.name}{_labels_text(self.labelnames, key)} {_format_value(v)}" for key, v in items]


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, documentation, labelnames)
        bounds = sorted(float(b) for b in buckets)
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError("histogram buckets must be distinct and non-empty")
        if not math.isinf(bounds[-1]):
            bounds.append(math.inf)
        self.buckets = tuple(bounds)
        self._counts: dict[LabelKey, list[int]] = {}
        self._sums: dict[LabelKey, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * len(self.buckets))
            for index, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[index] += 1
                    break
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        """Observations of the series with these labels; labels left out are summed over."""
        with self._lock:
            return sum(sum(counts) for key, counts in self._counts.items() if self._matches(key, labels))

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((key, list(counts), self._sums[key]) for key, counts in self._counts.items())
        lines = []
        for key, counts, total in items:
            cumulative = 0
            for bound, count in zip(self.buckets, counts, strict=True):
                cumulative += count
                le = f'le="{_format_value(bound)}"'
                lines.append(f"{self.name}_bucket{_labels_text(self.labelnames, key, le)} {cumulative}")
            lines.append(f"{self.name}_sum{_labels_text(self.labelnames, key)} {_format_value(total)}")
            lines.append(f"{self.name}_count{_labels_text(self.labelnames, key)} {cumulative}")
        return lines


class Registry:
    """A named set of metrics rendered together."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, documentation, labelnames)
        self._add(metric)
        return metric

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, documentation, labelnames)
        self._add(metric)
        return metric

    def histogram(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        metric = Histogram(name, documentation, labelnames, buckets)
        self._add(metric)
        return metric

    def get(self, name: str) -> _Metric:
        return self._metrics[name]

    def render(self) -> str:
        """The whole registry in the Prometheus text format (version 0.0.4)."""
        with self._lock:
            metrics = sorted(self._metrics.values(), key=lambda m: m.name)
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.header())
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"


MAX_AGENT_LABELS = 50
"""Distinct ``agent`` label values one process reports; later agents are counted as ``other`` (agents are few and
admin-made, but a label per value is a series per value: the bound keeps a runaway from costing the scraper)."""
_agent_labels: set[str] = set()
_agent_lock = threading.Lock()


def agent_label(name: str | None) -> str:
    """The ``agent`` label for an agent's name: ``-`` for none, ``other`` past :data:`MAX_AGENT_LABELS`."""
    if not name:
        return "-"
    with _agent_lock:
        if name in _agent_labels:
            return name
        if len(_agent_labels) < MAX_AGENT_LABELS:
            _agent_labels.add(name)
            return name
    return "other"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REGISTRY = Registry()

# --- calls (voice loop) -----------------------------------------------------------------------------------
CALLS_ACTIVE = REGISTRY.gauge("eva_calls_active", "Calls in progress on this worker.")
CALLS_CAPACITY = REGISTRY.gauge(
    "eva_calls_capacity", "Calls this worker admits at once (EVA_MAX_CALLS); inbound callers beyond it hear the busy "
    "prompt (counted in eva_calls_total with outcome busy).")
CALLS_TOTAL = REGISTRY.counter(
    "eva_calls_total", "Calls finished, by direction, outcome and agent.", ("direction", "outcome", "agent")
)
TURN_STAGE_SECONDS = REGISTRY.histogram(
    "eva_turn_stage_seconds",
    "Per-turn latency of each stage, measured from the end of the caller's speech "
    "(stage: stt, llm_first_token, first_sentence, tts_first_audio, first_frame_out), by agent.",
    ("stage", "agent"),
)
BARGE_INS_TOTAL = REGISTRY.counter("eva_barge_ins_total", "Times a caller interrupted the bot's playout, by agent.",
                                   ("agent",))
MESSAGES_TOTAL = REGISTRY.counter(
    "eva_messages_total", "Text-channel turns the agent core answered, by channel and agent.", ("channel", "agent")
)

# --- language model and knowledge -------------------------------------------------------------------------
LLM_ERRORS_TOTAL = REGISTRY.counter(
    "eva_llm_errors_total", "LLM requests that failed, by backend and error code.", ("backend", "code")
)
LLM_PROMPT_TOKENS_EVALUATED = REGISTRY.histogram(
    "eva_llm_prompt_tokens_evaluated",
    "Prompt tokens the embedded model evaluated per request (the rest came from its KV cache).",
    ("backend",),
    buckets=(0, 10, 20, 40, 80, 160, 320, 640, 1280, 2560),
)
LLM_PROMPT_EVAL_SECONDS = REGISTRY.histogram(
    "eva_llm_prompt_eval_seconds", "Time the embedded model spent evaluating prompt tokens per request.",
    ("backend",),
)
INGESTION_QUEUE = REGISTRY.gauge(
    "eva_ingestion_queue", "Knowledge documents accepted but not yet indexed (pending or processing)."
)

# --- telephony (admin_api/trunk_monitor.py) ----------------------------------------------------------------
TRUNK_UP = REGISTRY.gauge(
    "eva_trunk_up", "1 while a SIP trunk is up (answers qualify and, if it registers, is registered), else 0.",
    ("trunk",))
TRUNK_STATE_CHANGES_TOTAL = REGISTRY.counter(
    "eva_trunk_state_changes_total",
    "Changes of a SIP trunk's state, by trunk and new state (up, down, rejected, registering, unknown, disabled).",
    ("trunk", "state"))

# --- admin API --------------------------------------------------------------------------------------------
HTTP_REQUESTS_TOTAL = REGISTRY.counter(
    "eva_http_requests_total", "Admin API requests, by route and status.", ("method", "route", "status")
)
HTTP_REQUEST_SECONDS = REGISTRY.histogram(
    "eva_http_request_seconds",
    "Admin API request latency, by route.",
    ("method", "route"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
