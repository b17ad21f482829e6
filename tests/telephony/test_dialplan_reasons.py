"""Why Asterisk refused a dialplan line, in the designer's terms: the log lines below are what Asterisk 22 wrote
to messages.log for the refused files of ``test_make_run.py`` (chroot paths and glob-wide line numbers included),
and the ``dialplan show`` view is its real output for a file sorted after two others."""

from __future__ import annotations

from admin_api.dialplans import (
    asterisk_line_count,
    asterisk_reasons,
    choose_offset,
    glob_offset,
    parse_dialplan,
    parse_dialplan_show,
    verify_loaded,
)

STAMP = "[2026-12-01 12:30:15.481] WARNING[29312] "
DUP_LOG = (f"{STAMP}pbx.c: Unable to register extension '1' priority 1 in 'dup-entry', already in use\n"
           f"{STAMP}pbx_config.c: Unable to register extension at line 43 of /eva/5563aeac7d/etc/dialplan/dup.conf\n")
NEXT_LOG = (f"{STAMP}pbx_config.c: Can't use 'next' priority on the first entry at line 84 of "
            "/eva/5563aeac7d/etc/dialplan/nfirst.conf!\n")
LABEL_LOG = f"{STAMP}pbx.c: Extension '1' priority 2 in 'lab-entry', label 'l' already in use at priority 1\n"

def test_the_line_counter_runs_across_the_glob() -> None:
    # config.c: lineno++ once per fgets and once more for the read that meets end-of-file.
    assert [asterisk_line_count(t) for t in ("", "a", "a\n", "a\nb\n", "a\r\nb")] == [1, 1, 2, 3, 2]
    counts = {"front2.conf": 4, "frontdesk.conf": 4, "inbound.conf": 34, "zfront.conf": 4}
    assert [glob_offset(counts, name) for name in sorted(counts)] == [0, 4, 8, 42]


def test_a_refused_priority_gets_pbx_c_reason_and_the_files_own_line() -> None:
    reasons = asterisk_reasons(DUP_LOG, "dup.conf", ["dup-entry"], offset=40)
    assert reasons.by_line == {3: "Unable to register extension '1' priority 1 in 'dup-entry', already in use "
                                  "(Unable to register extension at line 3 of dup.conf)"}
    assert reasons.general == []
    next_reasons = asterisk_reasons(NEXT_LOG, "nfirst.conf", ["nfirst-entry"], offset=82)
    assert next_reasons.by_line == {2: "Can't use 'next' priority on the first entry at line 2 of nfirst.conf!"}


def test_warnings_about_other_files_and_contexts_are_not_ours() -> None:
    assert asterisk_reasons(DUP_LOG, "up.conf", ["up-entry"], offset=0) == asterisk_reasons("", "x", [], 0)
    assert asterisk_reasons(DUP_LOG.replace("/dup.conf", "/a-dup.conf"), "dup.conf", ["dup"], 0).by_line == {}
    # A label used twice names the context only: Asterisk loaded both priorities, but a Goto to it is ambiguous.
    assert asterisk_reasons(LABEL_LOG, "lab.conf", ["lab-entry"], 0).general == [
        "Extension '1' priority 2 in 'lab-entry', label 'l' already in use at priority 1"]


SHOW = """\
[ Context 'aa-first' created by 'pbx_config' ]
  '2' =>            1. NoOp(y)                                    [aa-first.conf:7]

-= 1 extension (1 priority) in 1 context. =-
"""


def test_a_file_whose_first_priority_was_refused_is_reported_at_the_right_line() -> None:
    """Asterisk refused line 2 (``n`` first) and loaded line 3 as its line 7 (two 2-line files sort before)."""
    parsed = parse_dialplan("[aa-first]\nexten => 1,n,Answer()\nexten => 2,1,NoOp(y)\n")
    after = parse_dialplan_show(SHOW)
    offset = choose_offset("aa-first.conf", parsed, after, [glob_offset({"0.conf": 2, "1.conf": 2}, "aa-first.conf")])
    assert offset == 4  # the smallest-line guess (7 - 2 = 5) would blame line 3 and call line 2 loaded
    reasons = asterisk_reasons(
        f"{STAMP}pbx_config.c: Can't use 'next' priority on the first entry at line 6 of "
        "/eva/x/etc/dialplan/aa-first.conf!\n", "aa-first.conf", ["aa-first"], offset)
    unexplained: list[int] = []
    problems = verify_loaded("aa-first.conf", parsed, {}, after, outbound=False, offset=offset, reasons=reasons,
                             unexplained=unexplained)
    assert problems == ["line 2 was not loaded: Can't use 'next' priority on the first entry at line 2 of "
                        "aa-first.conf!"]
    assert unexplained == []
    silent = verify_loaded("aa-first.conf", parsed, {}, after, outbound=False, offset=offset,
                           unexplained=unexplained)
    assert silent == ["line 2 was not loaded (Asterisk logged no reason)"] and unexplained == [2]
