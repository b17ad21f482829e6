"""Message analysis: each contact's message gets a sentiment and one of the admin's categories from the local LLM.

* :mod:`voicebot.analysis.classifier` — the prompt, the JSON schema the reply is constrained to, and reading it
  (pure: no I/O), plus :class:`Analyzer`, which asks the model;
* :mod:`voicebot.analysis.worker` — the background worker that claims unanalysed messages from the database and
  stores their analysis, only while the model is not busy with people (calls, chats), so the hot path never waits.

E-mail triage (``channels.email``) asks the :class:`Analyzer` directly, before choosing who answers a mail.
"""

from voicebot.analysis.classifier import SENTIMENTS, Analysis, Analyzer, CategorySpec

__all__ = ["SENTIMENTS", "Analysis", "Analyzer", "CategorySpec"]
