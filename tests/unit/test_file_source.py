"""A followed file survives rotation as `tail -F` does: rename + re-create, and copytruncate."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from bytewax.inputs import StatefulSourcePartition

from orderwatch.connectors import files
from orderwatch.connectors.files import JsonlSource, ResumeState
from orderwatch.connectors.raw import RawChunk
from orderwatch.events import Decoder, Rejected
from orderwatch.runtime import SourceHealth

Part = StatefulSourcePartition[RawChunk, ResumeState]


class Tail:
    """A followed file's partition, checking that chunks stay numbered without gaps whatever
    the rotations (shards re-order chunks by that number)."""

    def __init__(self, path: Path, resume: ResumeState | None = None) -> None:
        self.src = src = JsonlSource(path, follow=True, batch_size=100)
        self.part: Part = src.build_part("test", src.name, resume)
        self._next = resume[1] if resume else 1

    def read(self) -> list[tuple[int, list[bytes]]]:
        """(number of the first line in its file, lines) of each chunk one batch gave."""
        chunks = self.part.next_batch()
        for c in chunks:
            assert c.first == self._next, "a gap or overlap in the chunk numbering"
            self._next = c.first + len(c.lines)
        return [(int(c.position(0)), c.lines) for c in chunks]


@pytest.fixture
def no_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A renamed file is left as soon as it was read to its end (its writer is done with it)."""
    monkeypatch.setattr(files, "_ROTATE_GRACE", 0.0)


def _append(path: Path, text: str) -> None:
    with path.open("a") as f:
        f.write(text)


def _stopped_after_two_lines(live: Path) -> ResumeState:
    """The resume state of a daemon that read `a1`, `a2` from `live` and stopped."""
    live.write_text("a1\na2\n")
    tail = Tail(live)
    tail.read()
    state = tail.part.snapshot()
    tail.part.close()
    return state


@pytest.mark.usefixtures("no_grace")
def test_renamed_file_is_read_to_its_end_then_the_new_one_from_its_start(tmp_path: Path) -> None:
    live = tmp_path / "access.log"
    live.write_text("a1\na2\n")
    tail = Tail(live)
    assert tail.read() == [(1, [b"a1", b"a2"])]
    _append(live, "a3\na4-half")
    live.rename(tmp_path / "access.log.1")
    assert tail.read() == [(3, [b"a3"])]  # not yet re-created: the old file may still grow
    _append(tmp_path / "access.log.1", "\n")  # the writer finishes its line before reopening
    live.write_text("b1\nb2\n")
    assert tail.read() == [(4, [b"a4-half"])]  # every line of the old file, by its numbering
    assert tail.read() == [(1, [b"b1", b"b2"])]
    state = tail.part.snapshot()
    assert state[:4] == (6, 7, os.stat(live).st_ino, 3)  # the sequence goes on, the line restarts
    _append(live, "b3\n")
    assert tail.read() == [(3, [b"b3"])]
    assert Tail(live, state).read() == [(3, [b"b3"])]  # and a resume knows both


@pytest.mark.usefixtures("no_grace")
def test_old_files_unterminated_last_line_is_not_lost(tmp_path: Path) -> None:
    """It goes out as it is (a dead letter if it is not a whole event), not silently dropped."""
    live = tmp_path / "events.jsonl"
    live.write_text("a1\na2-cut")
    tail = Tail(live)
    assert tail.read() == [(1, [b"a1"])]
    live.rename(tmp_path / "events.jsonl.1")
    live.write_text("b1\n")
    assert tail.read() == [(2, [b"a2-cut"])]
    assert tail.read() == [(1, [b"b1"])]


def test_truncated_file_is_read_again_from_its_start(tmp_path: Path) -> None:
    """logrotate's copytruncate: the same inode, shorter than what was read."""
    live = tmp_path / "access.log"
    live.write_text("a1\na2\na3\n")
    tail = Tail(live)
    assert tail.read() == [(1, [b"a1", b"a2", b"a3"])]
    with live.open("r+") as f:
        f.truncate(0)
    _append(live, "b1\n")
    assert tail.read() == [(1, [b"b1"])]


def test_a_quiet_file_is_not_taken_for_a_rotated_one(tmp_path: Path) -> None:
    live = tmp_path / "events.jsonl"
    live.write_text("a1\n")
    tail = Tail(live)
    assert tail.read() == [(1, [b"a1"])]
    assert tail.read() == []
    _append(live, "a2\n")
    assert tail.read() == [(2, [b"a2"])]


def test_resume_continues_in_the_same_file(tmp_path: Path) -> None:
    live = tmp_path / "events.jsonl"
    state = _stopped_after_two_lines(live)
    st = os.stat(live)
    # offset, sequence, inode, line, device, and the fingerprint: length, hash
    assert state[:6] == (6, 3, st.st_ino, 3, st.st_dev, 6)
    _append(live, "a3\n")
    assert Tail(live, state).read() == [(3, [b"a3"])]
    assert Tail(live, state[:4]).read() == [(3, [b"a3"])]  # a state from before fingerprints
    assert Tail(live, state[:2]).read() == [(3, [b"a3"])]  # a state from before inodes


@pytest.mark.usefixtures("no_grace")
def test_resume_after_a_rotation_while_stopped_finishes_the_old_file_first(
    tmp_path: Path,
) -> None:
    """The old file, renamed beside the path, is found by its inode: lines written to it after
    the snapshot are not lost. Then the new file is read from its start."""
    live = tmp_path / "events.jsonl"
    state = _stopped_after_two_lines(live)
    _append(live, "a3\n")
    live.rename(tmp_path / "events.jsonl.1")
    live.write_text("b1\nb2\nb3\n")  # longer than the offset: only the inode tells
    resumed = Tail(live, state)
    assert resumed.read() == [(3, [b"a3"])]
    assert resumed.read() == [(1, [b"b1", b"b2", b"b3"])]


@pytest.mark.usefixtures("no_grace")
def test_resume_finds_the_old_file_beside_the_one_a_linked_path_points_to(
    tmp_path: Path,
) -> None:
    """Kubernetes: the path is a link (`/var/log/containers/app.log`) to the runtime's log,
    which is rotated in its own folder. The old file is looked for there too."""
    (tmp_path / "pods").mkdir()
    (tmp_path / "containers").mkdir()
    target = tmp_path / "pods" / "0.log"
    target.write_text("")
    link = tmp_path / "containers" / "app.log"
    link.symlink_to(target)
    state = _stopped_after_two_lines(link)
    _append(target, "a3\n")
    target.rename(tmp_path / "pods" / "0.log.1")
    target.write_text("b1\nb2\nb3\n")
    resumed = Tail(link, state)
    assert resumed.read() == [(3, [b"a3"])]
    assert resumed.read() == [(1, [b"b1", b"b2", b"b3"])]


def test_resume_after_a_rotation_reads_the_new_file_when_the_old_one_is_gone(
    tmp_path: Path,
) -> None:
    live = tmp_path / "events.jsonl"
    state = _stopped_after_two_lines(live)
    live.rename(tmp_path / "elsewhere.txt.gz")  # compressed away: its inode is not kept
    (tmp_path / "elsewhere.txt.gz").unlink()
    live.write_text("b1\n")
    assert Tail(live, state).read() == [(1, [b"b1"])]
    (tmp_path / "short.jsonl").write_text("c1\n")
    os.replace(tmp_path / "short.jsonl", live)
    assert Tail(live, state[:2]).read() == [(1, [b"c1"])]  # no inode: shorter than the offset


@pytest.mark.usefixtures("no_grace")
def test_a_new_file_that_cannot_be_opened_yet_is_tried_again(tmp_path: Path) -> None:
    """Something else at the path for a moment (here a directory): no crash, no loss."""
    live = tmp_path / "access.log"
    live.write_text("a1\n")
    tail = Tail(live)
    assert tail.read() == [(1, [b"a1"])]
    live.rename(tmp_path / "access.log.1")
    live.mkdir()
    assert tail.read() == []
    live.rmdir()
    live.write_text("b1\n")
    assert tail.read() == [(1, [b"b1"])]


def _followed(tmp_path: Path) -> tuple[Path, Tail, SourceHealth]:
    """A followed file whose first line was read: its path, reader and health."""
    live = tmp_path / "events.jsonl"
    live.write_text("a1\n")
    tail = Tail(live)
    assert tail.read() == [(1, [b"a1"])] and tail.src.health.problem is None
    return live, tail, tail.src.health


@pytest.mark.usefixtures("no_grace")
def test_a_deleted_file_is_reported_gone_until_a_file_at_its_path_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/readyz reads `health`: a followed file deleted for good was still 'connected'."""
    monkeypatch.setattr(files, "_GONE_AFTER", 0.0)
    live, tail, health = _followed(tmp_path)
    live.unlink()
    assert tail.read() == []
    assert health.problem == f"{live} is gone (deleted or moved, not re-created)"
    assert tail.read() == [] and health.problem is not None  # still gone at the next poll
    live.mkdir()  # something else at the path
    assert tail.read() == []
    assert health.problem == f"{live} was re-created but cannot be opened: Is a directory"
    live.rmdir()
    live.write_text("b1\n")
    assert tail.read() == [(1, [b"b1"])]
    assert health.problem is None


def test_a_file_moved_away_and_back_is_connected_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "_GONE_AFTER", 0.0)
    live, tail, health = _followed(tmp_path)
    live.rename(tmp_path / "aside")
    assert tail.read() == [] and health.problem is not None
    (tmp_path / "aside").rename(live)
    _append(live, "a2\n")
    assert tail.read() == [(2, [b"a2"])]
    assert tail.read() == [] and health.problem is None


@pytest.mark.usefixtures("no_grace")
def test_a_rotation_gap_is_not_reported_as_gone(tmp_path: Path) -> None:
    """Between logrotate's rename and the new file's creation the path is missing for a moment;
    reporting that made /readyz flap to 503 at every rotation a poll happened to fall in."""
    live, tail, health = _followed(tmp_path)
    live.rename(tmp_path / "events.jsonl.1")
    assert tail.read() == [] and health.problem is None  # a poll in the gap
    live.write_text("b1\n")
    assert tail.read() == [(1, [b"b1"])] and health.problem is None
    live.unlink()
    for _ in range(3):
        assert tail.read() == []
    time.sleep(files._GONE_AFTER)
    assert tail.read() == [] and health.problem is not None  # gone for longer: reported


def test_crlf_lines_lose_their_carriage_return_wherever_the_first_one_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows tools end lines with CRLF. The reader looks for a CR once per read instead
    of per line, so one first met in a later read must still be stripped (and the resume
    offset still counts every byte)."""
    monkeypatch.setattr(files, "_READ_SIZE", 4)  # "a1\nb" holds no CR; later reads do
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"a1\nb2\r\nc\r3\r\nd4\n")
    part = JsonlSource(path, batch_size=100).build_part("test", "f", None)
    lines = [ln for c in part.next_batch() for ln in c.lines]
    assert lines == [b"a1", b"b2", b"c\r3", b"d4"]  # a CR inside a line is the line's
    assert part.snapshot()[0] == path.stat().st_size


@pytest.mark.parametrize("follow", [True, False])
def test_the_chunk_that_reads_a_file_to_its_end_carries_its_last_write(
    tmp_path: Path, follow: bool
) -> None:
    """A backlog read at start is quiet since the file's last write, not since the read: the
    chunk that empties the file carries its mtime (`RawChunk.written`), the others none."""
    path = tmp_path / "events.jsonl"
    path.write_text("".join(f"line{i}\n" for i in range(250)))
    an_hour_ago = int(time.time() * 1000) - 3_600_000  # ms
    os.utime(path, ns=(an_hour_ago * 1_000_000, an_hour_ago * 1_000_000))
    src = JsonlSource(path, follow=follow, batch_size=100)
    part: Part = src.build_part("test", src.name, None)
    chunks = [c for _ in range(3) for c in part.next_batch()]
    assert [len(c.lines) for c in chunks] == [100, 100, 50]
    assert [c.written for c in chunks] == [None, None, an_hour_ago]
    part.close()


def test_a_renamed_file_is_read_on_until_its_writer_is_done_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer (nginx, or any logger reopening on logrotate's postrotate signal) goes on
    writing to the renamed file for a while: its lines, and a line half-written at the rename,
    were lost or cut when the new file was taken as soon as it appeared. The old file is read
    on until it has been quiet for the grace, and the new one waits until then."""
    clock = [1000.0]
    monkeypatch.setattr(files, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    live, old = tmp_path / "access.log", tmp_path / "access.log.1"
    live.write_text("a1\n")
    tail = Tail(live)
    assert tail.read() == [(1, [b"a1"])]
    with live.open("a") as writer:  # the writer's handle, held until it reopens its log
        writer.write("a2-ha")
        writer.flush()
        live.rename(old)
        live.write_text("b1\n")
        assert tail.read() == []  # the half-written line waits, and so does the new file
        clock[0] += 1
        writer.write("lf\na3\n")
        writer.flush()
        assert tail.read() == [(2, [b"a2-half", b"a3"])]
        during = tail.part.snapshot()  # taken during the grace: still the old file
        assert during[:4] == (len("a1\na2-half\na3\n"), 4, old.stat().st_ino, 4)
        assert tail.src.bytes_read == during[0]
        writer.write("a4-cut")  # the writer's last words, never finished
    assert tail.read() == []  # the old file grew: quiet since now
    clock[0] += files._ROTATE_GRACE - 0.1
    assert tail.read() == [] and tail.src.health.problem is None  # quiet, not yet for long
    clock[0] += 0.2
    assert tail.read() == [(4, [b"a4-cut"])]  # out as it is, as at the end of any file
    assert tail.read() == [(1, [b"b1"])]
    # A restart during the grace finishes the old file (and waits on it) before the new one.
    resumed = Tail(live, during)
    assert resumed.read() == []
    clock[0] += files._ROTATE_GRACE
    assert resumed.read() == [(4, [b"a4-cut"])]
    assert resumed.read() == [(1, [b"b1"])]


def _moved_away(live: Path, state: ResumeState) -> Path:
    """`live` rotated while stopped and its old file compressed away: an unrelated file in
    the folder then gets the freed inode number (ext4 gives them out again soon); here its
    number is written into the state instead."""
    live.rename(live.with_suffix(".1"))
    live.with_suffix(".1").unlink()
    other = live.parent / "other.log"
    other.write_text("another program's text log\n" * 4)
    return other


def test_resume_does_not_take_a_file_that_reused_the_old_inode_for_the_old_log(
    tmp_path: Path,
) -> None:
    live = tmp_path / "events.jsonl"
    state = _stopped_after_two_lines(live)
    other = _moved_away(live, state)
    live.write_text("b1\n")
    reused = (*state[:2], other.stat().st_ino, *state[3:])
    assert Tail(live, reused).read() == [(1, [b"b1"])]  # not "program's text log" at offset 6
    # a state from before fingerprints has only the inode to go by
    assert Tail(live, reused[:4]).read()[0][0] == 3


def test_a_file_at_the_path_that_reused_the_old_inode_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    live = tmp_path / "events.jsonl"
    state = _stopped_after_two_lines(live)
    live.unlink()
    live.write_text("b1\nb2\nb3\n")  # longer than the offset, and here with the old inode
    reused = (*state[:2], live.stat().st_ino, *state[3:])
    assert Tail(live, reused).read() == [(1, [b"b1", b"b2", b"b3"])]


def test_a_file_rewritten_in_place_at_a_larger_size_is_read_from_its_start(
    tmp_path: Path,
) -> None:
    """Same inode, no smaller than what was read: only its first bytes tell."""
    live = tmp_path / "events.jsonl"
    live.write_text("a1\na2\n")
    tail = Tail(live)
    assert tail.read() == [(1, [b"a1", b"a2"])]
    assert tail.read() == []
    live.write_text("b1\nb2\nb3\n")  # O_TRUNC, then written again
    assert tail.read() == [(1, [b"b1", b"b2", b"b3"])]  # not "b3" as the old file's line 3


def test_a_line_over_the_limit_is_cut_and_the_next_one_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer's hole of NUL bytes with no newline (or any very long line) was held whole
    and scanned again at every read. Only its head is kept; the reader returns to bytewax
    between reads; the line goes out cut, for the decoder to reject as `oversized` at its
    position; and the event after it is read as usual."""
    monkeypatch.setattr(files, "_READ_SIZE", 1000)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"a1\n" + b"\0" * 50_000)
    src = JsonlSource(path, follow=True, batch_size=100, max_line_bytes=256)
    part: Part = src.build_part("test", src.name, None)
    assert [c.lines for c in part.next_batch()] == [[b"a1"]]
    calls = 0
    while part.next_awake() is None:  # more to read: called again at once
        assert part.next_batch() == []
        calls += 1
        assert len(part._rest) <= 256 + 4  # type: ignore[attr-defined]
        assert part.snapshot()[0] == 3  # the cut line is not emitted yet
    assert calls >= 50_000 // (files._READS_PER_CALL * 1000)  # a few reads a call
    assert part.next_batch() == [] and part.next_awake() is not None  # the line waits
    with path.open("ab") as f:
        f.write(b'\0\0\n{"type":"order"}\n')
    [chunk] = part.next_batch()
    cut, after = chunk.lines
    assert (chunk.position(0), len(cut), after) == ("2", 256 + 4, b'{"type":"order"}')
    assert part.snapshot()[0] == path.stat().st_size
    rejected = Decoder(max_bytes=256).decode(cut, src.name, chunk.position(0))
    assert isinstance(rejected, Rejected) and rejected.reason == "oversized"
    assert rejected.truncated
    part.close()


@pytest.mark.parametrize("size", [256, 257, 259, 260, 261])
def test_lines_about_the_limit_are_cut_only_when_the_decoder_would_reject_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """A line read in pieces is joined up to the limit (and a BOM's 3 bytes); one cut is
    still over the limit for the decoder, with or without a BOM."""
    monkeypatch.setattr(files, "_READ_SIZE", 7)
    path = tmp_path / "events.jsonl"
    line = b"\xef\xbb\xbf" + b"x" * (size - 3)
    path.write_bytes(line + b"\nz\n" + line)  # the last one without a newline, at the end
    src = JsonlSource(path, batch_size=100, max_line_bytes=256)
    part: Part = src.build_part("test", src.name, None)
    lines: list[bytes] = []
    with pytest.raises(StopIteration):  # at the end of the file
        for _ in range(500):
            lines.extend(ln for c in part.next_batch() for ln in c.lines)
    assert lines[1] == b"z" and len(lines) == 3
    for got in (lines[0], lines[2]):
        assert got == line[: 256 + 4]
        decoded = Decoder(max_bytes=256).decode(got, src.name, "1")
        assert isinstance(decoded, Rejected)
        assert (decoded.reason == "oversized") == (size > 256 + 3)
    assert part.snapshot()[0] == path.stat().st_size
