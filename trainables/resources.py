"""Per-trial resource use, reported with every result, so MLflow shows it beside the losses (step = the report's).

- ``peak_rss_mib``: the trial worker process's peak resident memory so far, MiB (``getrusage`` ``ru_maxrss``:
  KiB on Linux, bytes on macOS). Tune starts one worker process per trial (``reuse_actors`` is off), so this
  is the trial's own, since its latest (re)start; absent where ``resource`` is missing (Windows).
- ``cpu_percent``: CPU time (user + system, all threads) of the process over the wall time since the previous
  report, in percent of one core (200 = two cores busy), evaluations included.
- on CUDA only: ``gpu_peak_memory_mib``, the peak of tensor memory this process allocated on the trial's device
  since the trial (re)started (``torch.cuda.max_memory_allocated``, MiB; the caching allocator's unused reserve
  and other processes are not in it), and ``gpu_utilization_percent``, the device's busy percentage over NVML's
  last sample period (``torch.cuda.utilization``: every process on that GPU; only where pynvml is installed).
"""

from __future__ import annotations

import sys
import time

import torch

try:
    import resource
except ImportError:  # Windows
    resource = None

MIB = 2**20
# ru_maxrss units: bytes on macOS, KiB on Linux and the BSDs
_MAXRSS_BYTES = 1 if sys.platform == "darwin" else 1024


def peak_rss_mib() -> float | None:
    if resource is None:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _MAXRSS_BYTES / MIB


class ResourceMeter:
    """``read()``: the resource metrics of the trial on ``device`` since the previous ``read()`` (or creation)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda" and torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def read(self) -> dict[str, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        metrics = {"cpu_percent": 100.0 * (cpu - self._cpu) / max(wall - self._wall, 1e-9)}
        self._wall, self._cpu = wall, cpu
        rss = peak_rss_mib()
        if rss is not None:
            metrics["peak_rss_mib"] = rss
        if self.cuda:
            metrics["gpu_peak_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / MIB
            try:
                metrics["gpu_utilization_percent"] = float(torch.cuda.utilization(self.device))
            except Exception:  # pynvml missing (ModuleNotFoundError) or NVML unusable here (RuntimeError)
                pass
        return metrics
