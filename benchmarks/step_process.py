"""One side of a benchmark in a process of its own, so that its runtime settings are its own.

A training step's speed on CPU depends on process-wide state as much as on its code: the intra-op thread
pool, and how the C library's allocator treats the step's large tensors (a project trial holds freed host
memory, ``vae_attention.training.host_memory``; a plain PyTorch script does not). Run in one process, two
sides would share that state. Here each side is a spawned child that builds its steps and times them
itself; the parent only sends commands over a pipe and reads back numbers, so the pipe's latency is never
inside a timed block. One child works at a time (the parent waits on it), so alternating blocks still see
the same machine.

    with StepProcess("benchmarks.textbook:TextbookStep", threads=2) as side:
        side.build("fvae", model="factorvae", batch=64)
        flops = side.flops("fvae")         # one step under torch's FLOP counter
        seconds = side.run("fvae", 10)     # ten steps, timed in the child

This module imports nothing of the project; ``hold_memory=True`` imports its host-memory policy in that child
only. (A spawned child re-imports the parent's ``__main__`` module, e.g. ``benchmarks.step``, which imports the
project's modules without running anything: no process-wide setting comes with them.)
"""

from __future__ import annotations

import contextlib
import importlib
import io
import multiprocessing
import time
import traceback
from typing import Any


def _resolve(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _serve(conn, builder: str, threads: int, device: str, hold_memory: bool) -> None:
    """The child's loop: build/flops/run commands until "close" (or the parent's end of the pipe closes)."""
    import torch

    from benchmarks.flops import _synchronize, step_flops

    if hold_memory:
        from vae_attention.training.host_memory import hold_freed_host_memory

        hold_freed_host_memory()
    torch.set_num_threads(threads)
    make, steps = _resolve(builder), {}
    while True:
        try:
            command, key, argument = conn.recv()
        except EOFError:
            return
        try:
            if command == "close":
                conn.send(("ok", None))
                return
            if command == "ping":
                reply = None
            elif command == "drop":
                steps.pop(key, None)
                reply = None
            elif command == "build":
                # quiet: e.g. the data set's notice, which the parent prints once
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    steps[key] = make(**argument)
                reply = None
            elif command == "flops":
                reply = step_flops(steps[key])
            else:  # "run": ``argument`` steps, timed here
                _synchronize(device)
                start = time.perf_counter()
                for _ in range(argument):
                    steps[key]()
                _synchronize(device)
                reply = time.perf_counter() - start
            conn.send(("ok", reply))
        except Exception:  # reported to the parent, which raises it there
            conn.send(("error", traceback.format_exc()))


class StepProcess:
    """A spawned child that builds steps with ``builder`` ("module:callable", called with keyword arguments
    that return a zero-argument step) and runs them on ``threads`` intra-op threads on ``device``."""

    def __init__(self, builder: str, threads: int, device: str = "cpu", hold_memory: bool = False):
        context = multiprocessing.get_context("spawn")  # a new interpreter: no torch or allocator state inherited
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, builder, threads, device, hold_memory),
                                        daemon=True)
        self._process.start()
        child.close()
        self.builder = builder

    def _call(self, command: str, key: str | None = None, argument: Any = None) -> Any:
        try:
            self._conn.send((command, key, argument))
            status, reply = self._conn.recv()
        except (EOFError, OSError) as err:
            raise RuntimeError(f"{self.builder}: its benchmark process ended (exit code "
                               f"{self._process.exitcode}): {type(err).__name__}") from None
        if status == "error":
            raise RuntimeError(f"{self.builder} in its benchmark process:\n{reply}")
        return reply

    def wait_ready(self) -> None:
        """Return once the child has started (imports done), e.g. before timing anything in the parent."""
        self._call("ping")

    def build(self, key: str, **spec: Any) -> None:
        self._call("build", key, spec)

    def drop(self, key: str) -> None:
        """Free a step (its models and optimiser state), so later steps start from a lean process."""
        self._call("drop", key)

    def flops(self, key: str) -> int:
        """FLOPs of one step (the step really runs and updates)."""
        return self._call("flops", key)

    def run(self, key: str, steps: int) -> float:
        """Seconds for ``steps`` consecutive steps, measured in the child."""
        return self._call("run", key, steps)

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("close", None, None))
                if self._conn.poll(30):  # a child stuck in a step is killed below instead of waited on
                    self._conn.recv()
            except (OSError, EOFError):
                pass
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def __enter__(self) -> StepProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
