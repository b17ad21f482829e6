"""Call records: the ``calls`` and ``call_turns`` rows the voice loop writes (see models/calls.py)."""
