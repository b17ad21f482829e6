"""What root Eva and the Asterisk user share on disk: modes that do not depend on the umask (a fresh machine once
could not boot Asterisk because ``/eva`` was 0750), and root never following a link Asterisk's uid planted (F3).

The attacks run as the real Asterisk uid of the image (a forked child that drops to it), against the real files
``render_config`` and the admin API's ``AsteriskLink`` write.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from admin_api.asterisk_link import AsteriskLink
from voicebot.asterisk.files import READ_ONLY_SUBDIRS, WRITABLE_SUBDIRS, open_append
from voicebot.asterisk.image import MARKER, image_modes_ok, image_ready
from voicebot.asterisk.process import Asterisk
from voicebot.asterisk.render import asterisk_ids, render_config
from voicebot.config import Settings
from voicebot.harness import isolated_settings
from voicebot.setup import STEPS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="Eva manages Asterisk as root")


def as_uid(uid: int, gid: int, base: Path, action: Callable[[], object]) -> int:
    """Run ``action`` in a child that has dropped to ``uid``/``gid`` inside ``base`` (as Asterisk sees its instance
    folder through the bind mount: relative paths, no host parents to traverse); exit 0 done, 13 EACCES."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.chdir(base)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            action()
        except PermissionError:
            code = 13
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = isolated_settings(tmp_path / "data")
    if not image_ready(s.asterisk_root):
        pytest.fail(f"no Asterisk image at {s.asterisk_root}: run `make setup`")
    return s


def test_rendered_tree_has_explicit_modes_whatever_the_umask(settings: Settings) -> None:
    old = os.umask(0o077)  # stricter than the CLI's 027: nothing may depend on it
    try:
        render_config(settings)
    finally:
        os.umask(old)
    uid, gid = asterisk_ids(settings)
    base = settings.asterisk_dir
    assert uid is not None and gid is not None
    st = base.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o750)
    for sub in READ_ONLY_SUBDIRS:
        st = (base / sub).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o750), sub
    for sub in WRITABLE_SUBDIRS:
        st = (base / sub).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o750), sub
    for conf in (base / "etc").glob("*.conf"):
        st = conf.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o640), conf.name


def test_asterisk_uid_reads_its_config_but_cannot_plant_links_in_it(settings: Settings) -> None:
    render_config(settings)
    old = os.umask(0o077)  # a prompt synthesized by root under a private umask
    try:
        (settings.asterisk_dir / "sounds" / "prompt.wav").write_bytes(b"RIFF")
    finally:
        os.umask(old)
    render_config(settings)
    uid, gid = asterisk_ids(settings)
    assert uid is not None and gid is not None
    base = settings.asterisk_dir
    assert as_uid(uid, gid, base, lambda: Path("etc/pjsip.conf").read_text()) == 0
    assert as_uid(uid, gid, base, lambda: Path("sounds/prompt.wav").read_bytes()) == 0
    for folder in ("etc", "etc/dialplan", "sounds", "."):
        target = Path(folder) / ".evil.conf.tmp"

        def plant(link: Path = target) -> None:
            os.symlink("/etc/passwd", link)

        assert as_uid(uid, gid, base, plant) == 13, folder
        assert not (base / target).is_symlink()
    # What it must write, it can.
    assert as_uid(uid, gid, base, lambda: Path("log/x.log").write_text("ok")) == 0
    assert as_uid(uid, gid, base, lambda: Path("spool/recording/r.wav").write_text("ok")) == 0


def test_root_never_writes_through_a_link_planted_under_the_temporary_name(settings: Settings, tmp_path: Path) -> None:
    """The review's X3: a link at ``.NAME.tmp`` made root overwrite, chmod and chown the link's target."""
    render_config(settings)
    victim = tmp_path / "host-file"
    victim.write_text("precious\n")
    os.chmod(victim, 0o600)
    dialplan = settings.asterisk_dir / "etc" / "dialplan"
    os.symlink(victim, dialplan / ".probe.conf.tmp")
    os.symlink(victim, settings.asterisk_dir / "etc" / ".pjsip.conf.tmp")

    AsteriskLink(settings, None).write_config(dialplan / "probe.conf", "[probe-ctx]\nexten => 1,1,NoOp()\n")
    written = dialplan / "probe.conf"
    assert not written.is_symlink() and "[probe-ctx]" in written.read_text()
    assert not (dialplan / ".probe.conf.tmp").exists()
    render_config(settings)
    assert not (settings.asterisk_dir / "etc" / "pjsip.conf").is_symlink()

    st = victim.stat()
    assert victim.read_text() == "precious\n"
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)


def test_links_left_from_an_older_layout_are_removed_and_ownership_taken_back(settings: Settings,
                                                                               tmp_path: Path) -> None:
    render_config(settings)
    uid, gid = asterisk_ids(settings)
    assert uid is not None and gid is not None
    etc = settings.asterisk_dir / "etc"
    # Before this layout the Asterisk uid owned etc/: it could have left a link and owned files there.
    planted = etc / "dialplan" / "planted.conf"
    os.symlink("/etc/shadow", planted)
    os.lchown(planted, uid, gid)
    os.chown(etc / "ari.conf", uid, gid)
    render_config(settings)
    assert not planted.is_symlink()
    assert (etc / "ari.conf").stat().st_uid == 0


def test_console_log_link_is_replaced_not_followed(settings: Settings, tmp_path: Path) -> None:
    victim = tmp_path / "root-only"
    victim.write_text("x")
    log = tmp_path / "console.log"
    os.symlink(victim, log)
    fd = open_append(log)
    try:
        os.write(fd, b"appended\n")
    finally:
        os.close(fd)
    assert victim.read_text() == "x"
    assert not log.is_symlink() and log.read_text() == "appended\n"


def _fake_image(root: Path) -> None:
    (root / "usr" / "sbin").mkdir(parents=True)
    (root / "usr" / "sbin" / "asterisk").write_text("")
    (root / MARKER).write_text("")


def test_setup_repairs_an_image_built_under_a_private_umask(tmp_path: Path) -> None:
    """An image made by an older Eva has /eva 0750: `eva setup` finds and repairs it, nothing to delete by hand."""
    root = tmp_path / "image"
    _fake_image(root)
    (root / "eva").mkdir(mode=0o750)
    os.chmod(root / "eva", 0o750)
    settings = Settings(data_dir=tmp_path / "data", asterisk_root=root)
    step = next(s for s in STEPS if s.name.startswith("Asterisk 22 image"))
    assert not image_modes_ok(root)
    assert not step.done(settings)
    step.run(settings)
    assert stat.S_IMODE((root / "eva").stat().st_mode) == 0o755
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    assert step.done(settings)


@pytest.mark.asterisk
def test_asterisk_start_repairs_the_image_before_it_mounts(settings: Settings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Even without `eva setup`, starting Asterisk repairs the image's modes before mounting (and then boots).

    What the repair does to a 0750 /eva is proven on an image of our own above
    (`test_setup_repairs_an_image_built_under_a_private_umask`); here it is only watched, because the real image
    is shared with every Asterisk of a parallel test run, and a 0750 /eva would cut them all off."""
    from voicebot.asterisk import image, process

    order: list[str] = []
    real_repair, real_mount = image.repair_image_modes, Asterisk._mount

    def repair(root: Path) -> None:
        order.append(f"repair {root}")
        real_repair(root)

    def mount(self: Asterisk) -> None:
        order.append("mount")
        real_mount(self)

    monkeypatch.setattr(process, "repair_image_modes", repair)
    monkeypatch.setattr(Asterisk, "_mount", mount)
    instance = Asterisk(settings)
    try:
        instance.start()
        assert order[:2] == [f"repair {settings.asterisk_root}", "mount"], order
        assert instance.status().running
    finally:
        instance.stop()


def test_a_container_asterisk_gets_its_files_by_the_configured_ids(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path / "data").with_(manage_asterisk=False, asterisk_uid=61234,
                                                          asterisk_gid=61235)
    render_config(settings)
    base = settings.asterisk_dir
    conf = (base / "etc" / "pjsip.conf").stat()
    assert (conf.st_uid, conf.st_gid) == (0, 61235)
    log = (base / "log").stat()
    assert (log.st_uid, log.st_gid) == (61234, 61235)


def test_a_writable_folder_swapped_for_a_link_never_redirects_roots_chown(settings: Settings, tmp_path: Path) -> None:
    """The review's race, made static: ``spool/recording`` replaced by a link to a host folder.  Root's walk used to
    follow it and hand the host files to Asterisk's uid (``/etc/shadow`` → host root)."""
    render_config(settings)
    uid, gid = asterisk_ids(settings)
    assert uid is not None and gid is not None
    host = tmp_path / "host-etc"
    host.mkdir(mode=0o755)
    os.chmod(host, 0o755)
    (host / "shadow").write_text("root:x\n")
    recording = settings.asterisk_dir / "spool" / "recording"
    recording.rmdir()
    os.symlink(host, recording)
    os.lchown(recording, uid, gid)
    render_config(settings)
    assert (host / "shadow").stat().st_uid == 0 and stat.S_IMODE(host.stat().st_mode) == 0o755
    assert host.stat().st_uid == 0
    assert not recording.is_symlink() and recording.stat().st_uid == uid
