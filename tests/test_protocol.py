"""The guest protocol (guestkit.frames, launch.Receiver): records survive kernel text spliced
into the console anywhere, damage is mended, resent or reported, and never mis-parsed."""
import hashlib
import os
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from guestkit import frames, launch
from guestkit.frames import Decoder, Record
from guestkit.launch import ProtocolError, Receiver

KERNEL = "[   12.345678] reboot: Power down\r\n"  # KERN_EMERG: printed at any loglevel
FILE = bytes(random.Random(16).randrange(256) for _ in range(4000))  # three chunks
EXPECTED = [Record("ready", "", b"2.5"), Record("out", "", b'{"a": 1}\n'), Record("err", "", b"no line end"),
            Record("file", "m/a b\u00e9.json", FILE), Record("file", "m/empty", b""), Record("exit", "0", b"")]


def stream(records=EXPECTED) -> str:
    """What the agent prints for `records`: its own stream, numbered from 0, lines ending
    as the tty sends them (ONLCR: \\r\\n)."""
    sid = os.urandom(4).hex()
    text = "".join(frames.encode(r.kind, r.name, r.data, rid=i, stream=sid) for i, r in enumerate(records))
    return text.replace("\n", "\r\n")


def decode(text: str, piece: int = 1 << 20) -> tuple[list[Record], list[str], Decoder]:
    d = Decoder()
    items = [item for i in range(0, len(text), piece) for item in d.feed_items(text[i:i + piece])] + d.finish()
    return ([i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, str)], d)


def test_clean_stream_round_trips_in_any_pieces():
    text = stream()
    for piece in (1, 7, 100, 2117, len(text)):
        records, console, d = decode(text, piece)
        assert records == EXPECTED and console == [] and d.errors == [] and d.rejected == []


def test_a_kernel_line_at_every_byte_position_loses_nothing():
    # Kernel lines land between any two bytes of ours (the UART sends the tty buffer from
    # its interrupt, printk writes at once): the frame is cut back out of them.
    text = stream()
    for cut in range(len(text) + 1):
        records, console, d = decode(text[:cut] + KERNEL + text[cut:], piece=1 + cut * 37 % 900)
        assert records == EXPECTED, cut
        assert d.errors == [] and any(line.endswith(KERNEL.strip()) for line in console), cut


def test_several_kernel_lines_at_one_position_are_cut_out_too():
    text, burst = stream(), KERNEL + "[   12.4] second\r\n" + "[   12.5] third\r\n"
    for cut in range(0, len(text) + 1, 7):
        records, console, d = decode(text[:cut] + burst + text[cut:])
        assert records == EXPECTED and d.errors == [], cut
        assert "[   12.5] third" in console


def test_the_issue16_exit_line():
    # `@@DMT-EXIT 0` + the power-off message before its line end gave int('0['): now the
    # exit code comes back and the message is shown as the kernel's.
    text = stream()
    end = text.rindex("@@") + 2
    records, console, _ = decode(text[:end] + KERNEL + text[end:])
    assert records[-1] == Record("exit", "0", b"") and console == [KERNEL.strip()]
    records, console, _ = decode(text[:end - 1] + KERNEL + text[end - 1:])
    assert records[-1] == Record("exit", "0", b"") and console == [KERNEL.strip()]


def test_two_cuts_in_one_line_are_reported_never_misparsed():
    text = stream()
    line = text.index("file 1/3")  # the file's second chunk line
    broken = text[:line + 300] + KERNEL + text[line + 300:line + 900] + KERNEL + text[line + 900:]
    records, _, d = decode(broken)
    assert [r for r in records if r.kind != "file" or r.name == "m/empty"] == \
        [r for r in EXPECTED if r.kind != "file" or r.name == "m/empty"]
    assert all(r.data == FILE for r in records if r.name.startswith("m/a"))
    assert len(d.errors) == 1 and "record 3 (file 'm/a b\u00e9.json', 4000 bytes): chunk(s) 1 of 3" in d.errors[0]
    assert d.rejected


def test_any_changed_character_is_caught():
    # Every single-character change of a stream either leaves the records as they were
    # (the character was outside the frames) or loses a record with an error saying so,
    # the last record of a stream included.
    records = [Record("out", "", b"ok\n"), Record("file", "x", bytes(range(200))), Record("exit", "7", b"")]
    text = stream(records)
    for pos in range(len(text)):
        if text[pos] in "\r\n":
            continue
        for new in {"A", "0", "@", " ", chr(ord(text[pos]) ^ 1)} - {text[pos]}:
            got, _, d = decode(text[:pos] + new + text[pos + 1:])
            assert all(r in records for r in got), (pos, new)
            lost = [r for r in records if r not in got]
            assert bool(lost) == bool(d.errors) and len(d.errors) >= len(lost), (pos, new, d.errors)


def test_console_junk_never_becomes_a_record():
    text = stream()
    lines = text.splitlines()
    rng = random.Random(18)
    for _ in range(400):
        junk = "".join(rng.choice([rng.choice(lines)[:rng.randrange(2200)], rng.choice(lines)[rng.randrange(2200):],
                                   frames.MARKER, "@@", "\n", "\r", KERNEL, "\x1b[2J", "\ufffd", "0" * 40])
                       for _ in range(rng.randrange(1, 30)))
        got, _, _ = decode(junk, piece=rng.randrange(1, 3000))
        assert all(r in EXPECTED for r in got)


class _Console:
    """A console the kernel prints into: kernel lines are spliced at two places of a
    window's first line (no mending can save it), and the kernel log says so."""

    def __init__(self, disturb: set[int]) -> None:
        self.text, self.disturb, self.windows, self.printed = "", disturb, 0, False

    def write(self, text: str) -> None:
        if self.windows in self.disturb:
            text = text[:15] + KERNEL + text[15:40] + KERNEL + text[40:]
            self.printed = True
        self.windows += 1
        self.text += text

    def flush(self) -> None:
        pass

    def poll(self) -> bool:
        printed, self.printed = self.printed, False
        return printed


def test_sender_resends_what_the_kernel_printed_into():
    console = _Console(disturb={3, 4, 7})  # the file's first batch twice, the empty file
    sender = frames.Sender(console, watch=console, drain=lambda: None)
    for r in EXPECTED:
        sender.send(r.kind, r.name, r.data)
    assert sender.resent >= 3 and sender.gave_up == 0
    records, shown, d = decode(console.text)
    assert records == EXPECTED and d.errors == [] and d.rejected  # damaged copies, intact resends
    assert sum(line.endswith(KERNEL.strip()) for line in shown) == 6  # all the kernel said is shown


def test_sender_gives_up_and_the_decoder_says_what_was_lost():
    console = _Console(disturb=set(range(3, 3 + frames.Sender.RETRIES + 1)))
    sender = frames.Sender(console, watch=console, drain=lambda: None)
    for r in EXPECTED:
        sender.send(r.kind, r.name, r.data)
    assert sender.gave_up == 1
    records, _, d = decode(console.text)
    assert len(records) == len(EXPECTED) - 1 and len(d.errors) == 1 and "record 3" in d.errors[0]


def test_kmsg_watch_sees_console_levels(tmp_path):
    read, write = os.pipe()
    os.set_blocking(read, False)
    watch = frames.KmsgWatch(read)
    assert watch.poll() is False
    os.write(write, b"0,1201,3000,-;emergency\n")
    assert watch.poll() is True and watch.poll() is False
    os.write(write, b"14,1202,3001,-;info from user space\n")  # facility 1, level 6
    assert watch.poll() is (6 < frames.console_loglevel())
    assert frames.KmsgWatch.open(str(tmp_path / "none")) is None


def test_receiver_writes_files_and_exit_code_through_kernel_lines(tmp_path):
    text = stream()
    for cut in range(0, len(text), 53):
        rx = Receiver(tmp_path / str(cut))
        shown = rx.feed(text[:cut] + KERNEL + text[cut:]) + rx.finish()
        assert rx.exit_code == 0 and rx.errors == [] and rx.ready_at is not None
        assert (tmp_path / str(cut) / "m/a b\u00e9.json").read_bytes() == FILE
        assert (tmp_path / str(cut) / "m/empty").read_bytes() == b""
        assert "".join(t for s, t in shown if s == "out") == '{"a": 1}\n'
        assert ("err", KERNEL.strip() + "\n") in shown and ("err", "no line end") in shown


def _fake_qemu(text: str, tmp_path: Path) -> list[str]:
    """A stand-in for QEMU: prints a console stream (the real agent's framing) and exits."""
    path = tmp_path / "console.txt"
    path.write_text(text)
    return ["cat", str(path)]


def test_boot_returns_the_exit_code_and_keeps_files(tmp_path):
    text = stream([Record("file", "m/r.json", b"{}"), Record("exit", "5", b"")])
    cut = text.index("exit") + 10
    rx = Receiver(tmp_path)
    assert launch._boot(_fake_qemu(text[:cut] + KERNEL + text[cut:], tmp_path), 30, rx, lambda item: None) == 5
    assert (tmp_path / "m/r.json").read_bytes() == b"{}"


def test_boot_with_a_garbled_record_is_one_error_of_the_run(tmp_path, capsys):
    text = stream([Record("file", "m/ok.json", b"{}"), Record("file", "m/bad.json", b"[1]"), Record("exit", "0", b"")])
    lines = text.split("\r\n")
    lines[1] = lines[1][:40] + ("X" if lines[1][40] != "X" else "Y") + lines[1][41:]
    garbled = "\r\n".join(lines)
    rx = Receiver(tmp_path / "r")
    with pytest.raises(ProtocolError) as exc:
        launch._boot(_fake_qemu(garbled, tmp_path), 30, rx, lambda item: None)
    assert exc.value.code == 3 and exc.value.exit_code == 0 and "\n" not in str(exc.value)
    assert str(exc.value).startswith("guest console: record 1 never arrived intact")
    assert (tmp_path / "r/m/ok.json").read_bytes() == b"{}" and not (tmp_path / "r/m/bad.json").exists()
    assert "guestkit: guest console: record 1" in capsys.readouterr().err


def test_lab_takes_one_hosts_protocol_error_as_that_hosts_error(tmp_path, monkeypatch, capsys):
    # What a host boot raises (a garbled console, or anything else) is that host's error;
    # the lab goes on with the other kernels.
    from guestkit import kernels
    from guestkit.lab import l0_command, l0_hostboot

    monkeypatch.setattr(l0_hostboot, "host_job", lambda kernel, bind_ivshmem: SimpleNamespace(files={}, setup=[]))
    monkeypatch.setattr(l0_command, "module_files", lambda kernel: {})
    kernel = kernels.Kernel("6.12.1-arm64", tmp_path / "Image", tmp_path / "modules", "test")
    args = l0_command.parser().parse_args(["--probes-only", "-o", str(tmp_path), "--timeout", "10"])
    for error, needle in ((ProtocolError(["record 4 never arrived intact"], 0, 0), "guest console: record 4"),
                          (ValueError("invalid literal for int()"), "boot failed: ValueError")):
        def fail(*a, error=error, **kw):
            raise error
        monkeypatch.setattr(launch, "run", fail)
        report, code = l0_command.run_host(kernel, args)
        assert code == 3 and needle in report.error
    assert "Traceback" not in capsys.readouterr().err


def test_agent_sends_framed_records(tmp_path, monkeypatch, capsys):
    # The agent's own send path: the records it prints decode to what it was given.
    from guestkit import agent

    monkeypatch.setattr(agent, "_sender", None)
    monkeypatch.setattr(frames.KmsgWatch, "open", classmethod(lambda cls, path="/dev/kmsg": None))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.bin").write_bytes(FILE)
    monkeypatch.setattr(agent, "RESULTS", tmp_path)
    agent.send("out", "", b"line\n")
    agent.send_file(tmp_path / "d" / "f.bin")
    records, console, _ = decode(capsys.readouterr().out)
    assert records == [Record("out", "", b"line\n"), Record("file", "d/f.bin", FILE)] and not console
    assert hashlib.sha256(records[1].data).digest() == hashlib.sha256(FILE).digest()


def test_agent_runs_where_guestkit_is_not_installed(tmp_path):
    # In the guest, /init runs agent.py as a script with no guestkit installed (-S: no
    # site-packages, where this checkout's editable install is).  Without a job it still
    # tells the host why, as a framed exit record.
    import subprocess

    agent = Path(__file__).resolve().parent.parent / "guestkit" / "agent.py"
    proc = subprocess.run([sys.executable, "-I", "-S", str(agent)], capture_output=True, text=True, cwd=tmp_path,
                          check=False, timeout=60)
    records, console, d = decode(proc.stdout)
    assert proc.returncode == 0 and console == [] and d.errors == [], proc.stderr
    assert records[-1].kind == "exit" and records[-1].name == "125" and b"FileNotFoundError" in records[-1].data
