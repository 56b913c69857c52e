"""The process-tree memory sampler counts children and grandchildren while they live, and only then."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hear_dymn.bench import memory
from hear_dymn.bench.memory import TreeMemorySampler, descendants, process_pss_bytes, tree_pss_bytes

MB = 1 << 20
HOLD = 60  # MB each of the child and the grandchild keep resident

# a child that starts a grandchild; each fills HOLD MB with non-zero bytes (resident pages, not lazy zero pages),
# says "ready", and waits for its stdin to close
GRANDCHILD = f"import sys; block = b'\\x01' * ({HOLD} << 20); print('ready', flush=True); sys.stdin.read()"
CHILD = textwrap.dedent(f"""
    import subprocess, sys
    grandchild = subprocess.Popen([sys.executable, "-c", {GRANDCHILD!r}], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
    assert grandchild.stdout.readline().strip() == "ready"
    block = b"\\x02" * ({HOLD} << 20)
    print(grandchild.pid, flush=True)
    sys.stdin.read()
    grandchild.stdin.close()
    grandchild.wait()
""")

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="PSS needs Linux /proc")


def test_the_tree_counts_a_child_and_a_grandchild_while_they_live() -> None:
    baseline, processes = tree_pss_bytes()
    assert processes == 1 + len(descendants(os.getpid())) and baseline > 0
    with TreeMemorySampler(interval=0.02) as sampler:
        child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        try:
            grandchild = int(child.stdout.readline())
            tree = descendants(os.getpid())
            assert child.pid in tree and grandchild in tree
            assert child.pid in memory._children_by_scan(os.getpid())  # the fallback finds the same child
            assert process_pss_bytes(grandchild) > (HOLD - 5) * MB
            during = sampler.sample()
            assert during.processes >= 3 and during.pss_bytes > baseline + (2 * HOLD - 10) * MB
        finally:
            child.stdin.close()
            child.wait(timeout=30)
    assert child.returncode == 0
    assert sampler.peak_bytes >= during.pss_bytes and sampler.peak_processes >= 3 and sampler.count >= 2
    after, _ = tree_pss_bytes()
    assert after < baseline + 20 * MB  # the ended processes are no longer counted
    assert process_pss_bytes(child.pid) is None and process_pss_bytes(grandchild) is None


def test_sampler_keeps_samples_and_rejects_bad_settings() -> None:
    with TreeMemorySampler(interval=0.01, keep_samples=True) as sampler:
        block = b"\x03" * (30 * MB)
        sampler.sample()
    del block
    assert len(sampler.samples) == sampler.count >= 2
    assert [s.seconds for s in sampler.samples] == sorted(s.seconds for s in sampler.samples)
    assert sampler.peak_bytes == max(s.pss_bytes for s in sampler.samples)
    with pytest.raises(ValueError, match="interval must be positive"):
        TreeMemorySampler(interval=0)
    with pytest.raises(RuntimeError, match="already started"):
        sampler.start().start()
    sampler.stop()
