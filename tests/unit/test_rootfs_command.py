"""``hypha rootfs DIR``: builds a runnable busybox tree, refuses a directory it did not build."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.cli import main
from tests.conftest import require


def _static_busybox() -> None:
    from runtime.errors import RuntimeNotFoundError
    from runtime.rootfs import find_static_busybox

    try:
        find_static_busybox()
    except RuntimeNotFoundError:
        require(False, "busybox-static is not installed")


def test_rootfs_builds_a_busybox_tree_and_reuses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _static_busybox()
    dest = tmp_path / "rootfs"
    main(["rootfs", str(dest)])
    assert capsys.readouterr().out.strip() == str(dest)
    assert os.access(dest / "bin" / "sh", os.X_OK)
    marker_before = (dest / ".hypha-busybox-rootfs").stat().st_mtime_ns
    main(["rootfs", str(dest)])
    assert (dest / ".hypha-busybox-rootfs").stat().st_mtime_ns == marker_before


def test_rootfs_refuses_a_directory_it_did_not_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _static_busybox()
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SystemExit) as done:
        main(["rootfs", str(tmp_path)])
    assert done.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("hypha: error: rootfs: ")
    assert "not a busybox rootfs built by Hypha" in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"
