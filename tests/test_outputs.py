"""One overwrite policy: refuse existing files, check the location first, exclusive creation, stale partial files."""

import os
import subprocess
import sys
import warnings

import pytest

from openmm_flowplugin.outputs import OutputExistsError, atomic_output_path, check_output_path, partial_files


def test_existing_file_refused_unless_overwrite(tmp_path):
    target = tmp_path / "traj.h5"
    target.write_text("user data")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output_path(target)
    with pytest.raises(OutputExistsError):
        with atomic_output_path(target) as tmp:
            tmp.write_text("new")
    assert target.read_text() == "user data"
    with atomic_output_path(target, overwrite=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


@pytest.mark.parametrize("case", ["directory", "parent_is_file", "not_writable"])
def test_unwritable_location_refused_before_work(tmp_path, case):
    if case == "directory":
        target, error = tmp_path, IsADirectoryError
    elif case == "parent_is_file":
        (tmp_path / "file").write_text("x")
        target, error = tmp_path / "file" / "out.h5", NotADirectoryError
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write anywhere: a read-only directory does not stop it")
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target, error = locked / "out.h5", PermissionError
    with pytest.raises(error):
        check_output_path(target)


def test_missing_parents_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    with atomic_output_path(target) as tmp:
        tmp.write_text("x")
    assert target.read_text() == "x"
    assert not partial_files(target)


def test_failed_block_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_output_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and not partial_files(target)


def test_two_writers_only_one_succeeds(tmp_path):
    """Both checked the path while it was free; the second to finish must fail and keep the first's file."""
    target = tmp_path / "out.txt"
    first = atomic_output_path(target)
    second = atomic_output_path(target)
    tmp1, tmp2 = first.__enter__(), second.__enter__()
    tmp1.write_text("first")
    tmp2.write_text("second")
    first.__exit__(None, None, None)
    with pytest.raises(OutputExistsError, match="another process"):
        second.__exit__(None, None, None)
    assert target.read_text() == "first"
    assert not partial_files(target)


def test_partial_file_of_killed_run_is_recognised_and_removed(tmp_path):
    target = tmp_path / "flow.pt"
    # a process that starts writing and is killed before it finishes
    code = (
        "import os, sys, time\n"
        "from openmm_flowplugin.outputs import atomic_output_path\n"
        f"with atomic_output_path({str(target)!r}) as tmp:\n"
        "    tmp.write_text('half'); print(tmp, flush=True); time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    leftover = process.stdout.readline().strip()
    process.kill()
    process.wait()
    assert os.path.exists(leftover)
    [(path, pid, alive)] = partial_files(target)
    assert str(path) == leftover and pid == process.pid and not alive
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_output_path(target)
    assert not os.path.exists(leftover)
    assert any("interrupted run" in str(w.message) for w in caught)


def test_partial_file_of_live_run_is_kept(tmp_path):
    target = tmp_path / "flow.pt"
    live = tmp_path / f".flow.partial-{os.getpid()}-deadbeef.pt"
    live.write_text("in progress")
    check_output_path(target)
    assert live.exists()
