"""scripts/get-base-model.sh never replaces a folder it did not write (checked without the network)."""

import subprocess

from .conftest import REPO


def test_a_folder_holding_other_files_is_refused_and_left_as_it_was(tmp_path):
    dest = tmp_path / "models" / "mine"
    dest.mkdir(parents=True)
    (dest / "notes.txt").write_text("keep me")
    done = subprocess.run(["bash", str(REPO / "scripts" / "get-base-model.sh"), str(dest)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "is not a complete all-mpnet-base-v2 folder" in done.stderr and "nothing was changed" in done.stderr
    assert [p.name for p in dest.parent.iterdir()] == ["mine"] and (dest / "notes.txt").read_text() == "keep me"
