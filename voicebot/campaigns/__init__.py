"""Outbound campaigns, the pure parts: the rules a campaign is configured with (:mod:`.rules`), the CSV import
parser (:mod:`.importer`), the do-not-call checks and opt-out phrase detector (:mod:`.dnc`) and the dialer's
scheduling state machine (:mod:`.scheduler`).  None of these touch a socket, a clock or the database; the
blocking database work on an open session is in :mod:`.store`.  What runs: the voice dialer (:mod:`.dialer`,
started by ``eva run``) and its do-not-call guard on answered calls (:mod:`.oncall`).
"""
