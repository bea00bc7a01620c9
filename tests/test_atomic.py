import os

import pytest

from modelzip.atomic import atomic_write


def test_a_new_file_gets_the_mode_open_would_give_it(tmp_path):
    (tmp_path / "plain").write_bytes(b"x")
    atomic_write(tmp_path / "atomic", lambda f: f.write(b"x"))
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_an_existing_file_keeps_its_mode(tmp_path):
    path = tmp_path / "shared"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "keep"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["keep"]
