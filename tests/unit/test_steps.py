"""Each pipeline step on real temporary files, and every step's option checking."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omsd.wire.paths import UnsafePathError
from workers.datafile import DataFile
from workers.steps import STEP_KINDS, build_step
from workers.steps.base import StepConfigError, StepContext, StepFailed, load_function, result_key
from workers.steps.call import FunctionReturnedError
from workers.steps.exec import ExecFailed
import workers.mapped as mapped
import workers.steps.save as save_module
from workers.steps.save import TEMP_PREFIX, copy_range, save_datafile

F = "tests.unit.stepfuncs:"
MTIME = 1_600_000_000.25


def make_datafile(staging: Path, content: bytes, *, subdir: str = "run1/scans", filename: str = "a.dat",
                  mtime: float | None = MTIME) -> DataFile:
    staging.mkdir(parents=True, exist_ok=True)
    staged = staging / f"omsd-{hashlib.sha1(content + filename.encode()).hexdigest()[:12]}"
    staged.write_bytes(content + b"\0TRAILING-STAGING-BYTES")
    return DataFile(staged_path=str(staged), size=len(content), subdir_str=subdir, filename=filename,
                    file_hash=hashlib.sha512(content).digest(), file_mtime=mtime, topic="raw")


def ctx_for(datafile: DataFile) -> StepContext:
    return StepContext(datafile=datafile, pipeline="p", topic="raw", state={})


def step(kind: str, options, *, has_prior_save: bool = False):
    return build_step(kind, options, pipeline="p", topic="raw", has_prior_save=has_prior_save)


# ---------------------------------------------------------------- save

def test_save_writes_content_subdirs_and_mtime(tmp_path: Path) -> None:
    content = os.urandom(300_000)
    df = make_datafile(tmp_path / "stage", content)
    out = tmp_path / "out"
    s = step("save", {"dir": str(out)})
    assert s.run(ctx_for(df)) == []
    target = out / "run1" / "scans" / "a.dat"
    assert target.read_bytes() == content
    assert target.stat().st_mtime == pytest.approx(MTIME, abs=1e-3)
    assert df.full_filepath == target.resolve()
    assert [p.name for p in target.parent.iterdir()] == ["a.dat"]  # no temp file left


def test_save_writes_a_small_file_the_worker_holds_from_memory(tmp_path: Path) -> None:
    content = os.urandom(5000)
    df = make_datafile(tmp_path / "stage", content)
    with pytest.raises(ValueError):
        df.hold_verified(content[:-1])  # only the whole content may be held
    df.hold_verified(content)
    assert df.content_in_memory == content and df.bytestring == content
    os.unlink(df.staged_path)  # from here on only the held bytes can be written
    target = save_datafile(df, tmp_path / "out")
    assert target.read_bytes() == content
    assert target.stat().st_mtime == pytest.approx(MTIME, abs=1e-3)
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.dat"]
    df.release()
    assert df.content_in_memory is None


def test_save_overwrites_the_partial_copy_of_a_killed_save(tmp_path: Path) -> None:
    """A worker killed mid-save leaves its temporary copy; saving the file again leaves only the file."""
    content = os.urandom(50_000)
    out = tmp_path / "out"
    s = step("save", {"dir": str(out)})
    first = make_datafile(tmp_path / "stage", content)
    s.run(ctx_for(first))
    target = out / "run1" / "scans" / "a.dat"
    target.unlink()
    # What the killed worker left: the deterministic temporary name of this target, half written.
    from workers.steps.save import save_datafile

    temp_name = None

    class Killed(Exception):
        pass

    import workers.steps.save as save_module

    real_copy = save_module.copy_range

    def killed_copy(src, dst, count):
        nonlocal temp_name
        temp_name = sorted(p.name for p in target.parent.iterdir())
        os.write(dst, b"half")
        raise Killed

    save_module.copy_range = killed_copy
    try:
        with pytest.raises(Killed):
            save_datafile(make_datafile(tmp_path / "stage", content), out)
    finally:
        save_module.copy_range = real_copy
    assert temp_name and temp_name[0].startswith(".omsd-tmp-")
    # (a real kill -9 would not run the clean-up; recreate what it leaves)
    (target.parent / temp_name[0]).write_bytes(b"half")
    s.run(ctx_for(make_datafile(tmp_path / "stage", content)))
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.dat"]
    assert target.read_bytes() == content


def test_save_from_shared_memory_staging(tmp_path: Path) -> None:
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    content = os.urandom(3 * 1024 * 1024 + 17)
    staged = Path("/dev/shm") / f"omsd-test-{os.getpid()}-{time.monotonic_ns()}"
    staged.write_bytes(content + b"extra")
    try:
        df = DataFile(staged_path=str(staged), size=len(content), subdir_str="", filename="big.bin",
                      file_hash=hashlib.sha512(content).digest(), file_mtime=None, topic="raw")
        path = save_datafile(df, tmp_path / "out")
        assert path.read_bytes() == content
    finally:
        staged.unlink()


def test_save_replaces_atomically_and_is_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "out"
    target = out / "run1" / "scans" / "a.dat"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"old content")
    reader = open(target, "rb")  # a reader of the old file keeps seeing the old file
    df = make_datafile(tmp_path / "stage", b"new content")
    s = step("save", {"dir": str(out)})
    s.run(ctx_for(df))
    old_inode = os.fstat(reader.fileno()).st_ino
    assert reader.read() == b"old content"
    reader.close()
    assert target.read_bytes() == b"new content"
    assert target.stat().st_ino != old_inode
    s.run(ctx_for(df))
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.dat"]


def test_save_empty_file(tmp_path: Path) -> None:
    df = make_datafile(tmp_path / "stage", b"", subdir="")
    path = save_datafile(df, tmp_path / "out")
    assert path == (tmp_path / "out" / "a.dat").resolve()
    assert path.read_bytes() == b""


@pytest.mark.parametrize("subdir,filename", [("../escape", "a.dat"), ("ok", ".."), ("/abs", "a.dat"), ("a/../../b", "x")])
def test_save_refuses_traversal(tmp_path: Path, subdir: str, filename: str) -> None:
    df = make_datafile(tmp_path / "stage", b"evil", subdir=subdir, filename=filename)
    out = tmp_path / "deep" / "out"
    with pytest.raises(UnsafePathError):
        step("save", {"dir": str(out)}).run(ctx_for(df))
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "deep" / "escape").exists()
    assert df.full_filepath is None


def test_save_refuses_symlink_out_of_root(tmp_path: Path) -> None:
    out = tmp_path / "out"
    outside = tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "run1").symlink_to(outside)
    df = make_datafile(tmp_path / "stage", b"x")
    with pytest.raises(UnsafePathError):
        step("save", {"dir": str(out)}).run(ctx_for(df))
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("subdir", ["", "run1/scans"])
def test_save_refuses_a_directory_in_the_way_and_writes_nothing(tmp_path: Path, subdir: str) -> None:
    out = tmp_path / "out"
    (out / subdir / "a.dat").mkdir(parents=True)
    df = make_datafile(tmp_path / "stage", b"x", subdir=subdir)
    with pytest.raises(IsADirectoryError, match="a directory is in the way"):
        step("save", {"dir": str(out)}).run(ctx_for(df))
    assert [p.name for p in (out / subdir).iterdir()] == ["a.dat"] and not any((out / subdir / "a.dat").iterdir())


def test_save_refuses_a_file_where_its_directory_should_be(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "run1").mkdir(parents=True)
    (out / "run1" / "scans").write_bytes(b"not a directory")
    df = make_datafile(tmp_path / "stage", b"x")
    with pytest.raises(OSError):
        step("save", {"dir": str(out)}).run(ctx_for(df))
    assert (out / "run1" / "scans").read_bytes() == b"not a directory"


def test_save_creates_a_directory_removed_since_an_earlier_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    save = step("save", {"dir": str(out)})
    save.run(ctx_for(make_datafile(tmp_path / "stage", b"first")))
    shutil.rmtree(out / "run1")
    save.run(ctx_for(make_datafile(tmp_path / "stage", b"second")))
    assert (out / "run1" / "scans" / "a.dat").read_bytes() == b"second"


def test_save_temp_file_removed_on_failure(tmp_path: Path) -> None:
    df = make_datafile(tmp_path / "stage", b"abcdef")
    Path(df.staged_path).write_bytes(b"abc")  # shorter than the declared size
    out = tmp_path / "out"
    with pytest.raises(OSError, match="source ended"):
        step("save", {"dir": str(out)}).run(ctx_for(df))
    leftovers = [p for p in out.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert leftovers == []
    assert not (out / "run1" / "scans" / "a.dat").exists()


def test_save_restore_sets_path_without_writing(tmp_path: Path) -> None:
    df = make_datafile(tmp_path / "stage", b"x")
    out = tmp_path / "out"
    step("save", {"dir": str(out)}).restore(ctx_for(df))
    assert df.full_filepath == (out / "run1" / "scans" / "a.dat").resolve()
    assert not out.exists()


@pytest.mark.parametrize("method", ["copy_file_range", "sendfile", "readwrite"])
def test_copy_range_each_method(tmp_path: Path, method: str) -> None:
    content = os.urandom(10_000)
    (tmp_path / "src").write_bytes(content + b"not copied")
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT)
    try:
        copy_range(src, dst, len(content), block=4096, methods=[method])
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "dst").read_bytes() == content


def test_copy_range_falls_back_when_kernel_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def refuse(*args, **kwargs):
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(save_module, "_REFUSED", {})
    monkeypatch.setattr(os, "copy_file_range", refuse)
    monkeypatch.setattr(os, "sendfile", refuse)
    content = os.urandom(5000)
    (tmp_path / "src").write_bytes(content)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT)
    try:
        copy_range(src, dst, len(content), block=1024)
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "dst").read_bytes() == content


def test_copy_range_remembers_a_refusal_per_pair_of_file_systems(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    tried: list[int] = []

    def refuse(*args, **kwargs):
        tried.append(1)
        raise OSError(errno.EXDEV, "cross-device")

    monkeypatch.setattr(save_module, "_REFUSED", {})
    monkeypatch.setattr(os, "copy_file_range", refuse)
    for n in range(3):
        content = os.urandom(3000 + n)
        (tmp_path / f"src{n}").write_bytes(content)
        src = os.open(tmp_path / f"src{n}", os.O_RDONLY)
        dst = os.open(tmp_path / f"dst{n}", os.O_WRONLY | os.O_CREAT)
        try:
            copy_range(src, dst, len(content))
        finally:
            os.close(src)
            os.close(dst)
        assert (tmp_path / f"dst{n}").read_bytes() == content
    assert len(tried) == 1  # the later files went to sendfile directly


def _direct_io_works(directory: Path) -> bool:
    try:
        fd = os.open(directory / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    return True


@pytest.mark.parametrize("size", [8192, 8192 + 17, 5 * 65536 + 4096 * 3 + 1000, 65536 * 3])
def test_save_direct_io_across_windows_and_a_partial_last_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  size: int) -> None:
    """Whole blocks go through O_DIRECT from mapped windows, the tail through the page cache."""
    if not _direct_io_works(tmp_path):
        pytest.skip("this file system does not do direct I/O")
    monkeypatch.setattr(save_module, "DIRECT_MIN", 4096)
    monkeypatch.setattr(mapped, "MAP_WINDOW", max(65536, __import__("mmap").ALLOCATIONGRANULARITY))

    def no_buffered(*_args):
        raise AssertionError("the buffered copy must not be used")

    monkeypatch.setattr(save_module, "write_buffered", no_buffered)
    content = os.urandom(size)
    df = make_datafile(tmp_path / "stage", content)
    path = step("save", {"dir": str(tmp_path / "out")}).run(ctx_for(df)) or df.full_filepath
    assert path.read_bytes() == content
    assert path.stat().st_mtime == pytest.approx(MTIME, abs=1e-3)
    assert [p.name for p in path.parent.iterdir()] == ["a.dat"]


@pytest.mark.parametrize("refusal", ["open", "write"])
def test_save_falls_back_to_the_page_cache_when_direct_io_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     refusal: str) -> None:
    import errno

    monkeypatch.setattr(save_module, "DIRECT_MIN", 4096)
    real_open, real_pwrite_all = os.open, save_module.pwrite_all
    refused = []

    def open_refusing_direct(path, flags, *args):
        if flags & os.O_DIRECT and refusal == "open":
            refused.append(path)
            raise OSError(errno.EINVAL, "no direct I/O here")
        return real_open(path, flags, *args)

    def pwrite_refusing_direct(fd, view, offset):
        if refusal == "write" and not refused:
            refused.append(fd)
            real_pwrite_all(fd, view[:100], offset)  # something half-written first
            raise OSError(errno.EINVAL, "misaligned")
        real_pwrite_all(fd, view, offset)

    monkeypatch.setattr(save_module.os, "open", open_refusing_direct)
    monkeypatch.setattr(save_module, "pwrite_all", pwrite_refusing_direct)
    content = os.urandom(3 * 4096 + 5)
    df = make_datafile(tmp_path / "stage", content)
    path = save_datafile(df, tmp_path / "out")
    assert refused
    assert path.read_bytes() == content
    assert [p.name for p in path.parent.iterdir()] == ["a.dat"]


def test_save_direct_io_false_uses_the_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(save_module, "DIRECT_MIN", 1)

    def no_direct(*_args):
        raise AssertionError("direct I/O must not be used")

    monkeypatch.setattr(save_module, "write_direct", no_direct)
    content = os.urandom(20_000)
    df = make_datafile(tmp_path / "stage", content)
    step("save", {"dir": str(tmp_path / "out"), "direct_io": False}).run(ctx_for(df))
    assert df.full_filepath.read_bytes() == content


def test_save_of_a_short_staging_file_fails_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(save_module, "DIRECT_MIN", 4096)
    content = os.urandom(3 * 4096)
    df = make_datafile(tmp_path / "stage", content)
    Path(df.staged_path).write_bytes(content[:5000])  # the staging file lost bytes
    with pytest.raises(OSError, match="source ended after"):
        save_datafile(df, tmp_path / "out")
    assert list((tmp_path / "out" / "run1" / "scans").iterdir()) == []


# ---------------------------------------------------------------- metadata

def test_metadata_sends_json_under_openmsistream_key(tmp_path: Path) -> None:
    df = make_datafile(tmp_path, b"payload")
    msgs = step("metadata", {"function": F + "meta_dict", "topic": "meta"}).run(ctx_for(df))
    assert len(msgs) == 1
    assert msgs[0].topic == "meta"
    assert msgs[0].key == "run1_scans_a.dat_chunk_processing_result"
    assert json.loads(msgs[0].value.decode()) == {
        "name": "a.dat", "size": 7, "sha256": hashlib.sha256(b"payload").hexdigest(),
    }


@pytest.mark.parametrize("subdir", ["", "a", "a/b/c"])
def test_result_key_matches_openmsistream(subdir: str) -> None:
    from openmsistream.data_file_io.utilities import get_message_prepend

    assert result_key(subdir, "f.txt") == f"{get_message_prepend(subdir, 'f.txt')}_processing_result"
    assert result_key(None, "f.txt") == f"{get_message_prepend(None, 'f.txt')}_processing_result"


def test_result_key_root_file_has_leading_underscore() -> None:
    assert result_key("", "f.txt") == "_f.txt_chunk_processing_result"


@pytest.mark.parametrize("func,match", [("meta_list", "not a dict"), ("meta_unserialisable", "JSON")])
def test_metadata_bad_results_fail(tmp_path: Path, func: str, match: str) -> None:
    df = make_datafile(tmp_path, b"x")
    with pytest.raises(StepFailed, match=match):
        step("metadata", {"function": F + func, "topic": "meta"}).run(ctx_for(df))


# ---------------------------------------------------------------- reproduce

@pytest.mark.parametrize("func,expected", [
    ("repro_bytes", b"cba"),
    ("repro_str", "len=3 é".encode()),
    ("repro_dict", json.dumps({"relative": "run1/scans/a.dat"}).encode()),
])
def test_reproduce_value_types(tmp_path: Path, func: str, expected: bytes) -> None:
    df = make_datafile(tmp_path, b"abc")
    msgs = step("reproduce", {"function": F + func, "topic": "out"}).run(ctx_for(df))
    assert [(m.topic, m.key, m.value) for m in msgs] == [("out", "run1_scans_a.dat_chunk_processing_result", expected)]


def test_reproduce_none_sends_nothing(tmp_path: Path) -> None:
    df = make_datafile(tmp_path, b"abc")
    assert step("reproduce", {"function": F + "repro_none", "topic": "out"}).run(ctx_for(df)) == []


def test_reproduce_wrong_type_fails(tmp_path: Path) -> None:
    df = make_datafile(tmp_path, b"abc")
    with pytest.raises(StepFailed, match="int"):
        step("reproduce", {"function": F + "repro_int", "topic": "out"}).run(ctx_for(df))


def test_reproduce_disk_mode_saves_itself(tmp_path: Path) -> None:
    df = make_datafile(tmp_path / "stage", b"on disk")
    s = step("reproduce", {"function": F + "repro_disk", "topic": "out", "mode": "disk", "dir": str(tmp_path / "o")})
    assert s.saves_file
    msgs = s.run(ctx_for(df))
    assert msgs[0].value == b"on disk"
    assert df.full_filepath == (tmp_path / "o" / "run1" / "scans" / "a.dat").resolve()
    other = make_datafile(tmp_path / "stage2", b"zz")
    s.restore(ctx_for(other))
    assert other.full_filepath == (tmp_path / "o" / "run1" / "scans" / "a.dat").resolve()


def test_reproduce_disk_mode_uses_prior_save(tmp_path: Path) -> None:
    df = make_datafile(tmp_path / "stage", b"saved before")
    ctx = ctx_for(df)
    step("save", {"dir": str(tmp_path / "o")}).run(ctx)
    s = step("reproduce", {"function": F + "repro_disk", "topic": "out", "mode": "both"}, has_prior_save=True)
    assert not s.saves_file
    assert s.run(ctx)[0].value == b"saved before"


def test_reproduce_disk_mode_needs_dir_or_prior_save() -> None:
    with pytest.raises(StepConfigError, match="save step"):
        step("reproduce", {"function": F + "repro_disk", "topic": "out", "mode": "disk"})


# ---------------------------------------------------------------- call

def test_call_success_and_failures(tmp_path: Path) -> None:
    df = make_datafile(tmp_path, b"abc")
    assert step("call", {"function": F + "call_ok"}).run(ctx_for(df)) == []
    with pytest.raises(RuntimeError, match="boom from call_raises"):
        step("call", {"function": F + "call_raises"}).run(ctx_for(df))
    with pytest.raises(FunctionReturnedError, match="returned, not raised"):
        step("call", {"function": F + "call_returns_exception"}).run(ctx_for(df))


# ---------------------------------------------------------------- exec

def saved(tmp_path: Path, content: bytes = b"exec me") -> StepContext:
    ctx = ctx_for(make_datafile(tmp_path / "stage", content))
    step("save", {"dir": str(tmp_path / "saved")}).run(ctx)
    return ctx


def test_exec_runs_program_with_placeholders_and_env(tmp_path: Path) -> None:
    ctx = saved(tmp_path)
    report = tmp_path / "report.txt"
    script = 'printf "%s|%s|%s|%s|" "$1" "$2" "$3" "$GREETING" > "$4"; cat "$1" >> "$4"'
    s = step("exec", {"argv": ["/bin/sh", "-c", script, "sh", "{path}", "{relative_path}", "{filename}", str(report)],
                      "env": {"GREETING": "hi"}}, has_prior_save=True)
    assert s.run(ctx) == []
    assert report.read_text() == f"{ctx.datafile.full_filepath}|run1/scans/a.dat|a.dat|hi|exec me"


def test_exec_nonzero_exit_reports_code_and_stderr_tail(tmp_path: Path) -> None:
    ctx = saved(tmp_path)
    script = 'head -c 5000 /dev/zero | tr "\\0" x >&2; echo THE-END >&2; exit 3'
    s = step("exec", {"argv": ["/bin/sh", "-c", script]}, has_prior_save=True)
    with pytest.raises(ExecFailed) as info:
        s.run(ctx)
    text = str(info.value)
    assert "exited with code 3" in text
    assert "THE-END" in text
    assert text.count("x") <= 2000


def test_exec_timeout_kills_process_group(tmp_path: Path) -> None:
    ctx = saved(tmp_path)
    pidfile = tmp_path / "child.pid"
    script = f'sleep 30 & echo $! > {pidfile}; wait'
    s = step("exec", {"argv": ["/bin/sh", "-c", script], "timeout": 0.5}, has_prior_save=True)
    started = time.monotonic()
    with pytest.raises(ExecFailed, match="timed out"):
        s.run(ctx)
    assert time.monotonic() - started < 5
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # a killed child that is not ours may linger as a zombie until reaped by init
        if Path(f"/proc/{child}/stat").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the program's background child survived the timeout")


def test_exec_needs_saved_file_and_existing_program() -> None:
    with pytest.raises(StepConfigError, match="save step"):
        step("exec", {"argv": ["/bin/true"]})
    with pytest.raises(StepConfigError, match="not found"):
        step("exec", {"argv": ["no-such-program-omsd"]}, has_prior_save=True)


# ---------------------------------------------------------------- option checking

BAD_OPTIONS = [
    ("save", {}, "missing required option 'dir'"),
    ("save", {"dir": "/x", "mode": 1}, "unknown option"),
    ("save", {"dir": 5}, "'dir' must be a string"),
    ("save", {"dir": " "}, "must not be empty"),
    ("save", ["dir"], "must be a mapping"),
    ("s3", {}, "missing required option 'bucket'"),
    ("s3", {"bucket": "b", "multipart_chunksize": 1024}, "'multipart_chunksize' must be at least"),
    ("s3", {"bucket": "b", "multipart_threshold": True}, "got a boolean"),
    ("s3", {"bucket": "b", "multipart_threshold": "8MB"}, "'multipart_threshold' must be a integer"),
    ("s3", {"bucket": "b", "aws_access_key_id": "k"}, "both"),
    ("s3", {"bucket": "b", "verify": "md5"}, "'verify' must be one of"),
    ("s3", {"bucket": "b", "acl": "public"}, "unknown option"),
    ("metadata", {"function": F + "meta_dict"}, "missing required option 'topic'"),
    ("metadata", {"topic": "t"}, "missing required option 'function'"),
    ("metadata", {"function": "nocolon", "topic": "t"}, "module:attribute"),
    ("metadata", {"function": F + "nope", "topic": "t"}, "no attribute"),
    ("reproduce", {"function": F + "repro_str", "topic": "t", "mode": "tape"}, "'mode' must be one of"),
    ("reproduce", {"function": F + "repro_str", "topic": "t", "dir": ""}, "must not be empty"),
    ("call", {"function": F + "NOT_CALLABLE"}, "not callable"),
    ("call", {"function": "tests.unit.no_such_module:f"}, "no module named"),
    ("call", {"function": F + "call_ok", "extra": 1}, "unknown option"),
    ("save", {"dir": "/x", "direct_io": "yes"}, "'direct_io' must be a boolean"),
    ("exec", {}, "missing required option 'argv'"),
    ("exec", {"argv": "/bin/true"}, "'argv' must be a list"),
    ("exec", {"argv": []}, "must name a program"),
    ("exec", {"argv": ["/bin/true", 3]}, "'argv'\\[1\\] must be a string"),
    ("exec", {"argv": ["/bin/true"], "timeout": 0}, "'timeout' must be at least"),
    ("exec", {"argv": ["/bin/true"], "env": {"A": 1}}, "'env'\\['A'\\] must be a string"),
    ("openmsistream", {}, "missing required option 'class'"),
    ("openmsistream", {"class": F + "meta_dict"}, "not a subclass"),
]


@pytest.mark.parametrize("kind,options,match", BAD_OPTIONS)
def test_bad_options_raise_step_config_error(kind: str, options, match: str) -> None:
    with pytest.raises(StepConfigError, match=match):
        step(kind, options, has_prior_save=True)


def test_every_kind_has_a_bad_options_case() -> None:
    assert {kind for kind, _, _ in BAD_OPTIONS} == set(STEP_KINDS)


def test_unknown_kind_lists_known_kinds() -> None:
    with pytest.raises(StepConfigError) as info:
        step("ftp", {})
    for kind in ("save", "s3", "metadata", "reproduce", "call", "exec"):
        assert kind in str(info.value)


def test_functions_are_not_imported_when_asked(tmp_path: Path) -> None:
    s = build_step("call", {"function": "not_installed_pkg.mod:f"}, pipeline="p", topic="t", load_functions=False)
    with pytest.raises(StepConfigError, match="no module named"):
        s.run(ctx_for(make_datafile(tmp_path, b"x")))


# ---------------------------------------------------------------- load_function

def test_load_function_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_function(F + "call_ok").__name__ == "call_ok"
    assert load_function("os.path:join") is os.path.join
    (tmp_path / "omsd_broken_mod.py").write_text("import not_a_real_dependency_xyz\n")
    (tmp_path / "omsd_raising_mod.py").write_text("raise RuntimeError('import-time failure')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = [
        ("no_colon", "module:attribute"),
        ("a:b:c", "module:attribute"),
        (":f", "module:attribute"),
        ("mod:", "module:attribute"),
        ("no_such_module_omsd:f", "no module named 'no_such_module_omsd'"),
        ("omsd_broken_mod:f", "importing 'omsd_broken_mod' failed.*not_a_real_dependency_xyz"),
        ("omsd_raising_mod:f", "import-time failure"),
        ("os:no_such_attr", "no attribute"),
        ("os:sep", "not callable"),
    ]
    for spec, match in cases:
        with pytest.raises(StepConfigError, match=match):
            load_function(spec)


def test_worker_modules_import_neither_kafka_nor_boto3() -> None:
    code = (
        "import sys, workers.datafile, workers.pipeline, workers.steps, workers.steps.s3\n"
        "bad = [m for m in ('confluent_kafka', 'boto3', 'botocore') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == ""
