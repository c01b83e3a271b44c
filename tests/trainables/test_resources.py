"""``trainables.resources.ResourceMeter``: the resource metrics every trial report carries, against the kernel's own
accounting (``/proc/self/status``) and CUDA's allocator; the CUDA case needs a GPU."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.resources import ResourceMeter


def _proc_status_mib(field: str) -> float:
    """A memory line of this process's ``/proc/self/status`` (kB = KiB), in MiB: VmHWM peak, VmRSS current."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} line")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the oracle reads Linux's /proc")
def test_peak_rss_is_the_kernels_high_water_mark_and_sees_a_new_allocation():
    meter = ResourceMeter("cpu")
    before = meter.read()["peak_rss_mib"]
    assert abs(before - _proc_status_mib("VmHWM")) < 2  # the same counter, read a moment apart
    grow = before - _proc_status_mib("VmRSS") + 64  # MiB that lift the resident set 64 MiB above the old peak
    if grow > 1024:
        pytest.skip(f"this process's peak is {grow - 64:.0f} MiB above its resident set; not worth reaching")
    block = np.ones(int(grow * 2**20) // 8)  # float64, written: resident
    after = meter.read()["peak_rss_mib"]
    assert after - before >= 48 and abs(after - _proc_status_mib("VmHWM")) < 2
    del block


def test_cpu_percent_is_cpu_time_over_wall_time_of_each_window():
    meter = ResourceMeter("cpu")
    time.sleep(0.3)
    idle = meter.read()["cpu_percent"]
    end = time.perf_counter() + 0.3
    while time.perf_counter() < end:  # busy: this window's CPU time is well above the idle one's
        pass
    busy = meter.read()["cpu_percent"]
    assert 0 <= idle < 20 and busy > idle
    assert not [k for k in meter.read() if k.startswith("gpu_")]  # none on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_trials_report_peak_gpu_memory_since_the_trial_started():
    device = torch.device("cuda")
    waste = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)  # before the trial: not counted
    del waste
    meter = ResourceMeter(device)
    block = torch.ones(64 * 2**20 // 4, device=device)  # 64 MiB of float32
    metrics = meter.read()
    assert 64 <= metrics["gpu_peak_memory_mib"] < 200
    if "gpu_utilization_percent" in metrics:  # only with pynvml installed
        assert 0 <= metrics["gpu_utilization_percent"] <= 100
    del block
