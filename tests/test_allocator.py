"""The ``textlora`` command re-executes itself on tcmalloc/jemalloc (TEXTLORA_ALLOCATOR), once, or says why not."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from textlora.speed import allocator
from textlora.errors import ConfigError

from .conftest import write_tiny_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
TCMALLOC = allocator.find_library("tcmalloc")
needs_tcmalloc = pytest.mark.skipif(TCMALLOC is None, reason=f"tcmalloc is not installed ({allocator.INSTALL_HINT})")
# A real shared library that is not an allocator: preloading it is harmless and visible in LD_PRELOAD.
LIBM = next((str(p) for p in map(Path, ("/lib/x86_64-linux-gnu/libm.so.6", "/lib/aarch64-linux-gnu/libm.so.6",
                                         "/lib64/libm.so.6", "/usr/lib/libm.so.6")) if p.is_file()), None)
REPORT = ("import os; from textlora.speed import allocator; allocator.reexec_with_fast_allocator(); "
          "print(allocator.loaded(), os.environ.get('LD_PRELOAD', ''), os.environ.get('TEXTLORA_ALLOCATOR_TRIED', ''), "
          "sep='|')")


def _child(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV, allocator._TRIED)}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def no_installed_allocators(monkeypatch, tmp_path):
    """A machine with neither library: an empty search folder and an empty ldconfig cache."""
    monkeypatch.setattr(allocator, "_search_dirs", lambda: [tmp_path])
    monkeypatch.setattr(allocator.ctypes.util, "find_library", lambda name: None)
    return tmp_path


def test_auto_prefers_tcmalloc_then_jemalloc_and_falls_back_to_glibc(no_installed_allocators):
    folder = no_installed_allocators
    assert allocator.resolve("auto") is None
    (folder / "libjemalloc.so.2").write_bytes(b"")
    assert allocator.resolve("auto") == str(folder / "libjemalloc.so.2")
    (folder / "libtcmalloc_minimal.so.4").write_bytes(b"")
    assert allocator.resolve("auto") == str(folder / "libtcmalloc_minimal.so.4")
    assert allocator.resolve("") == allocator.resolve("auto")
    assert allocator.resolve("system") is None


def test_a_named_allocator_that_is_missing_is_one_clear_error(no_installed_allocators):
    with pytest.raises(ConfigError, match=r"TEXTLORA_ALLOCATOR=tcmalloc: no tcmalloc library found .*apt install"):
        allocator.resolve("tcmalloc")
    with pytest.raises(ConfigError, match=r"/nowhere/libtcmalloc.so.4: no such file"):
        allocator.resolve("/nowhere/libtcmalloc.so.4")
    with pytest.raises(ConfigError, match=r"'tcmaloc' is not known; use one of auto, tcmalloc, jemalloc, system"):
        allocator.resolve("tcmaloc")


def test_preload_env_puts_the_library_first_and_keeps_the_users_settings():
    env = allocator.preload_env("/x/libtcmalloc.so.4", {"LD_PRELOAD": "/y/libother.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"] == "/x/libtcmalloc.so.4:/y/libother.so" and env["PATH"] == "/bin"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
    kept = allocator.preload_env("/x/lib.so", {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": "5"})
    assert kept["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == "5"
    assert allocator.preload_env(None, {"A": "1"}) == {"A": "1"}


@pytest.mark.skipif(LIBM is None, reason="no libm.so.6 at a known path")
def test_the_process_re_executes_once_with_the_library_preloaded():
    # libm stands in for an allocator given by its path: the log names the file it preloaded.
    result = _child(REPORT, TEXTLORA_ALLOCATOR=LIBM)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"libm.so.6|{LIBM}|{LIBM}"
    # A library that cannot be preloaded (ld.so says so and goes on) is tried once, not in a loop.
    result = _child(REPORT, TEXTLORA_ALLOCATOR=__file__)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"None|{__file__}|{__file__}"
    assert "cannot be preloaded" in result.stderr


def test_system_leaves_the_process_alone():
    result = _child(REPORT, TEXTLORA_ALLOCATOR="system")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None||"


@needs_tcmalloc
def test_auto_runs_on_tcmalloc_when_it_is_installed():
    result = _child(REPORT)
    assert result.returncode == 0, result.stderr
    loaded, preload, tried = result.stdout.strip().split("|")
    assert loaded == "tcmalloc" and preload.startswith(TCMALLOC) and tried == TCMALLOC
    # Already on tcmalloc (a user's own LD_PRELOAD): no re-exec, nothing added.
    result = _child(REPORT, LD_PRELOAD=TCMALLOC)
    assert result.stdout.strip() == f"tcmalloc|{TCMALLOC}|"


def test_the_cli_rejects_an_unknown_allocator_before_doing_anything(tmp_path):
    result = _child("import sys; from textlora.cli import main; sys.exit(main())", TEXTLORA_ALLOCATOR="fast")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: TEXTLORA_ALLOCATOR='fast' is not known; use one of auto, tcmalloc, jemalloc, system or a path to a shared library"]


@needs_tcmalloc
def test_textlora_train_runs_on_tcmalloc_and_says_so(tmp_path, tiny_model_dir):
    config = write_tiny_config(tmp_path / "tiny.yaml", tiny_model_dir, tmp_path / "runs")
    command = f"import sys; sys.argv = ['textlora', 'train', '--config', {str(config)!r}]; " \
              "from textlora.cli import main; sys.exit(main())"
    result = _child(command, HF_HUB_OFFLINE="1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[speed] memory allocator: tcmalloc (TEXTLORA_ALLOCATOR=auto; system = glibc malloc)" in result.stdout
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["memory_allocator"] == "tcmalloc"
