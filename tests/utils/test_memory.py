import json
import os
import subprocess
import sys

import pytest

# Allocates and touches a 64 MB tensor and frees it, round after round: the page faults of the
# last rounds tell whether the freed memory was kept (none) or returned to the system (~16k
# pages of 4 KB a round). The first rounds may still grow the heap (an aligned block does not
# always fit in the hole that the previous one left). Run in a fresh interpreter, since the
# setting is process-wide.
_PROBE = """
import json, resource, sys
import torch
setup = sys.argv[1]
if setup == "function":
    from fima.utils.memory import retain_freed_memory
    assert retain_freed_memory()
elif setup == "default_setup":
    from fima.config import get_cfg
    from fima.engine.defaults import default_setup
    cfg = get_cfg()
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "OUTPUT_DIR", sys.argv[2]])
    default_setup(cfg)
def touch():
    buffer = torch.empty(16 * 2**20)  # 64 MB
    buffer.fill_(1.0)
    del buffer
for _ in range(12):
    touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    touch()
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _run_probe(code: str, *args: str) -> int:
    """Run ``code`` in a fresh interpreter; the number its last line prints."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _faults_of_last_rounds(setup: str, tmp_path) -> int:
    return _run_probe(_PROBE, setup, str(tmp_path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize("setup", ["function", "default_setup"])
def test_freed_memory_is_reused_without_page_faults(setup, tmp_path):
    default = _faults_of_last_rounds("none", tmp_path)
    if default < 3000:
        pytest.skip(f"this system does not fault freed blocks back in ({default} faults)")
    retained = _faults_of_last_rounds(setup, tmp_path)
    assert retained < default / 10, (retained, default)


_RETURN_PROBE = """
import json, re
import torch
from fima.utils.memory import retain_freed_memory, return_freed_memory
def resident():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmRSS:\\s+(\\d+) kB", f.read()).group(1)) * 1024
assert retain_freed_memory()
buffer = torch.empty(16 * 2**20)  # 64 MB
buffer.fill_(1.0)
del buffer
kept = resident()
return_freed_memory()
print(json.dumps(kept - resident()))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux's /proc")
def test_returning_freed_memory_shrinks_the_resident_set():
    returned = _run_probe(_RETURN_PROBE)
    assert returned > 48 * 2**20, returned  # most of the 64 MB that was freed and kept
