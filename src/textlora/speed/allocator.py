"""The process's memory allocator: tcmalloc when it is installed, because CPU training is faster on it
(BENCHMARKS.md, Training speed on glibc and tcmalloc).

A training step on the CPU allocates and frees hundreds of activation tensors whose sizes change with
every batch's length. glibc's malloc hands each large block back to the kernel and faults fresh pages
in for the next one, and its heap fragments over a run, so throughput sags and RSS grows; tcmalloc
keeps both flat (measured in BENCHMARKS.md, "Memory allocator"). PyTorch's
own CPU tuning guide recommends the same.

An allocator can only be chosen before a process starts (``LD_PRELOAD``), so the ``textlora`` command
re-executes itself once with the library preloaded (:func:`reexec_with_fast_allocator`). The
environment variable ``TEXTLORA_ALLOCATOR`` chooses: ``auto`` (default: tcmalloc, else jemalloc, if
installed; otherwise glibc's malloc), ``tcmalloc``, ``jemalloc``, ``system`` (leave the process alone),
or a path to a shared library. Python code that imports textlora keeps its interpreter's allocator:
start it with ``LD_PRELOAD`` (:func:`preload_env` builds that environment).
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path
from typing import Mapping, Optional

from textlora.errors import ConfigError

ENV = "TEXTLORA_ALLOCATOR"
_TRIED = "TEXTLORA_ALLOCATOR_TRIED"  # set across the re-exec so that a library that fails to preload cannot loop
# Shared-library names, most specific first; ``ldconfig`` knows the versioned ones on Debian/Ubuntu/Fedora.
LIBRARIES = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so", "libtcmalloc.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
}
INSTALL_HINT = ("apt install libtcmalloc-minimal4 (Debian 12, Ubuntu 22.04; libtcmalloc-minimal4t64 on Debian 13, "
                "Ubuntu 24.04), dnf install gperftools-libs (Fedora), or conda install gperftools")
CHOICES = ("auto", "tcmalloc", "jemalloc", "system")


def _search_dirs() -> list[Path]:
    """Library folders of this environment (a conda env or venv may ship its own) before the system's."""
    dirs = [Path(sys.prefix) / "lib"]
    if os.environ.get("CONDA_PREFIX"):
        dirs.append(Path(os.environ["CONDA_PREFIX"]) / "lib")
    return dirs + [Path(p) for p in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                                     "/usr/lib", "/usr/local/lib")]


def find_library(kind: str) -> Optional[str]:
    """Path (or, from ldconfig's cache, soname) of an installed ``tcmalloc`` or ``jemalloc`` library, or None."""
    for directory in _search_dirs():
        for name in LIBRARIES[kind]:
            if (directory / name).is_file():
                return str(directory / name)
    for name in LIBRARIES[kind]:  # ldconfig's cache: other distributions' folders
        found = ctypes.util.find_library(name[3:].split(".so")[0])
        if found:
            return found
    return None


def resolve(choice: str) -> Optional[str]:
    """The library to preload for a ``TEXTLORA_ALLOCATOR`` value, or None for glibc's own malloc.

    Raises:
        ConfigError: an allocator named explicitly (or a path) is not installed.
    """
    choice = choice.strip() or "auto"
    if choice == "system" or not sys.platform.startswith("linux"):
        return None
    if choice == "auto":
        return find_library("tcmalloc") or find_library("jemalloc")
    if choice in LIBRARIES:
        found = find_library(choice)
        if found is None:
            raise ConfigError(f"{ENV}={choice}: no {choice} library found in {', '.join(map(str, _search_dirs()))} "
                              f"or ldconfig's cache; install it ({INSTALL_HINT}), or set {ENV}=auto or system")
        return found
    if "/" in choice:
        if not Path(choice).is_file():
            raise ConfigError(f"{ENV}={choice}: no such file; give the path of a shared library such as "
                              f"libtcmalloc_minimal.so.4, or one of {', '.join(CHOICES)}")
        return str(Path(choice).absolute())
    raise ConfigError(f"{ENV}={choice!r} is not known; use one of {', '.join(CHOICES)} or a path to a shared library")


def loaded() -> Optional[str]:
    """The allocator mapped into this process, else None (glibc malloc).

    ``tcmalloc``, ``jemalloc`` or ``mimalloc``, or the file name of a library that ``TEXTLORA_ALLOCATOR``
    named by its path.
    """
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for kind in (*LIBRARIES, "mimalloc"):
        if f"lib{kind}" in maps:
            return kind
    named = Path(os.environ.get(_TRIED, "")).name
    return named if named and f"/{named}" in maps else None


def preload_env(library: Optional[str], env: Optional[Mapping[str, str]] = None) -> dict:
    """A copy of ``env`` (default: this process's) that starts a process with ``library`` preloaded (None: as is)."""
    env = dict(os.environ if env is None else env)
    if library is None:
        return env
    env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
    # tcmalloc reports every allocation over 1 GB on stderr; a large batch of activations is not news.
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    return env


def reexec_with_fast_allocator() -> None:
    """Re-execute this process once with tcmalloc/jemalloc preloaded, per ``TEXTLORA_ALLOCATOR``; else return.

    Returns without doing anything when a fast allocator is already loaded, when the choice is
    ``system`` (or ``auto`` finds none), off Linux, or when this process is itself the re-execution.
    Call it first thing, before threads or files are opened: ``os.execve`` replaces the process.
    """
    if os.environ.get(_TRIED) or loaded() is not None:
        return
    library = resolve(os.environ.get(ENV, "auto"))
    if library is None:
        return
    env = preload_env(library)
    env[_TRIED] = library
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def note() -> str:
    """One line for a log: which allocator this process runs with, and how to change it."""
    kind, choice = loaded(), os.environ.get(ENV, "auto")
    if kind is not None:
        return f"memory allocator: {kind} ({ENV}={choice}; system = glibc malloc)"
    if choice == "system":
        return f"memory allocator: glibc malloc ({ENV}=system)"
    if not sys.platform.startswith("linux"):
        return "memory allocator: the platform's own"
    return (f"memory allocator: glibc malloc; CPU training runs faster with less memory on tcmalloc "
            f"(BENCHMARKS.md, Training speed on glibc and tcmalloc): {INSTALL_HINT}")
