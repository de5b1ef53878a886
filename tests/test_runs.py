import os
import stat

from calib.core.runs import atomic_write_bytes


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    """Results are shared files: an atomic write must not leave mkstemp's owner-only mode behind."""
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a" / "row.json", b"{}")
    finally:
        os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "a" / "row.json").stat().st_mode)
    assert mode == 0o644
    assert not list((tmp_path / "a").glob(".*.tmp"))
