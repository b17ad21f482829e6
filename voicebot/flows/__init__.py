"""Conversation flows: the graph of steps an IVR designer writes, and the engine that runs it on every channel.

- :mod:`.spec` -- what a flow looks like (JSON/YAML, pydantic-checked) and the graph checks (references,
  variables collected before they are used, unreachable steps, loops that never wait for the caller).
- :mod:`.values` -- the parsers behind ``collect`` (number, date, phone, e-mail, choice with synonyms, yes/no).
- :mod:`.engine` -- the pure state machine: state + one input event -> new state + outputs.  No I/O.
- :mod:`.store` and :mod:`.runner` -- persistence of a run per conversation and the side effects (webhooks,
  messages, LLM extraction, handing over to the agent), shared by voice, WhatsApp, e-mail and chat.
"""
