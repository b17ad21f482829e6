"""E-mail triage: before a mail is answered, its category (from the local model, ``voicebot.analysis``) may route it
to another agent or set it aside for a person.

The rules live on the admin's categories (``models.Category``: ``route_agent_id``, ``needs_human``).  Triage runs
only when at least one category carries a rule, so an install without rules spends no model time on it.  What
:func:`decide` returns is a pure function of the analysis and the rules (tested without a model); a model that fails
or answers nonsense never stops a mail being answered: it is answered by the agent it was addressed to, as without
triage.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, col, select

from models import Agent, Category
from voicebot.analysis.classifier import Analysis, CategorySpec


@dataclass(frozen=True)
class Rules:
    categories: tuple[CategorySpec, ...]
    routes: dict[str, int]
    """category name → the agent (id) that answers it"""
    held: frozenset[str]
    """categories set aside for a person"""

    @property
    def active(self) -> bool:
        return bool(self.routes or self.held)


@dataclass(frozen=True)
class Decision:
    analysis: Analysis | None
    agent_id: int | None = None
    """Answer with this agent instead of the addressed one (None: the addressed one)."""
    held: bool = False
    """Send no answer: the conversation waits for a person."""


def load_rules(session: Session) -> Rules:
    """The categories and their rules; a route to an agent that is gone or inactive is no route."""
    rows = session.exec(select(Category).order_by(col(Category.id))).all()
    active = set(session.exec(select(Agent.id).where(col(Agent.active).is_(True))).all())
    return Rules(tuple(CategorySpec(r.name, r.description) for r in rows),
                 {r.name: r.route_agent_id for r in rows
                  if r.route_agent_id is not None and r.route_agent_id in active},
                 frozenset(r.name for r in rows if r.needs_human))


def decide(analysis: Analysis | None, rules: Rules) -> Decision:
    if analysis is None or analysis.category is None:
        return Decision(analysis)
    if analysis.category in rules.held:
        return Decision(analysis, held=True)
    return Decision(analysis, agent_id=rules.routes.get(analysis.category))
