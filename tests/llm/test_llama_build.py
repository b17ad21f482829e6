"""How llama.cpp was built: portable on x86-64, with no AMX kernels.

llama.cpp built for the CPU it compiles on (its default) uses AMX where the CPU reports it, and those kernels
crashed Eva's first reply on a host that does not grant AMX state (SIGSEGV in ggml_backend_amx_mul_mat).  A
wheel built that way would also be reused by pip's cache on other CPUs.  scripts/setup builds it portable."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest


def _cpu_library() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.origin is not None
    found = sorted((Path(spec.origin).parent / "lib").glob("libggml-cpu*.so*"))
    assert found, "llama_cpp ships no libggml-cpu library"
    return found[0]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the portable build is an x86-64 choice")
def test_the_llama_cpp_cpu_backend_has_no_amx_kernels() -> None:
    library = _cpu_library().read_bytes()
    assert b"ggml_backend_amx_mul_mat" not in library, "llama.cpp was built with AMX (run make setup again)"
