"""Helpers over Warp arrays and tapes, and the only module of diffenvs that touches Warp internals.

The lowest layer of the package: it imports nothing of diffenvs, so the solvers (``sim/``), the
tape layer (:mod:`diffenvs.autodiff`) and the tasks can all use it.

Warp internals used here, and only here (``tests/test_layers.py`` checks both that nothing else
uses them and that they still behave as assumed, so that a Warp release that moves them fails
loudly instead of silently dropping gradients):

* ``warp._src.context.runtime.tape``: the tape that is recording now (:func:`record_adjoint`);
* ``Tape.record_func``, ``Tape.launches``, ``Tape.gradients`` and ``array.mark_init`` (the
  array-access verifier's read marks, :func:`forget_reads`);
* ``warp._src.types.type_size_in_bytes`` (:func:`type_size_in_bytes`);
* ``warp._src.context.runtime`` being ``None`` before ``wp.init()`` (:func:`quiet_warp`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import warp as wp
from warp._src import context as _wp_context
from warp._src import types as _wp_types

GRAD_ALIGNMENT = 64
"""Byte alignment of each gradient inside a pooled buffer (:func:`pooled_grads`)."""


def walk_arrays(value: Any) -> Iterator[wp.array]:
    """Every Warp array inside ``value``: an array, a dataclass, a dict, a list or tuple, nested."""
    if isinstance(value, wp.array):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from walk_arrays(getattr(value, field.name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from walk_arrays(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from walk_arrays(item)


def pooled_grads(arrays: list[wp.array], device: wp.DeviceLike) -> wp.array:
    """Give each of ``arrays`` (contiguous) a zeroed gradient inside one new buffer; return the buffer.

    One ``zero_()`` of the buffer then zeroes every gradient: a step has dozens of small arrays,
    and a ``zero_()`` call costs about as much Python time as a kernel launch.
    """
    offsets, total = [], 0
    for array in arrays:
        if not array.is_contiguous:
            raise ValueError(f"only contiguous arrays can share a gradient buffer, got strides {array.strides}")
        offsets.append(total)
        total += -(-array.capacity // GRAD_ALIGNMENT) * GRAD_ALIGNMENT
    pool = wp.zeros(max(total, 1), dtype=wp.uint8, device=device)
    for array, offset in zip(arrays, offsets):
        grad = wp.array(ptr=pool.ptr + offset, dtype=array.dtype, shape=array.shape, device=pool.device)
        grad._pool = pool  # keeps the memory alive
        array.grad = grad
    return pool


def recording_tape() -> wp.Tape | None:
    """The tape that is recording launches now, or ``None``."""
    runtime = _wp_context.runtime
    return None if runtime is None else runtime.tape


def record_adjoint(backward: Callable[[], None], arrays: Sequence[wp.array]) -> bool:
    """Record a hand-written adjoint on the tape that is recording now; return whether one was.

    For kernels launched with ``record_tape=False`` whose adjoint is written by hand (faster
    than Warp's generated one): ``backward`` runs in the backward pass in place of the generated
    adjoint and must *add* to the gradients of the kernel's inputs. ``arrays`` are the arrays it
    reads or writes, whose gradients the tape zeroes in ``Tape.zero()``.
    """
    tape = recording_tape()
    if tape is None:
        return False
    tape.record_func(backward, [a for a in arrays if a.grad is not None])  # (the others have no gradient to zero)
    return True


def forget_reads(tape: wp.Tape) -> None:
    """Clear the read marks of Warp's array-access verifier on every array ``tape`` recorded.

    For a designed overwrite: checkpointing overwrites a step's scratch after its tape read it,
    and refills it before that tape runs backwards. (What ``Tape.backward()`` does at its end.)
    """
    for launch in tape.launches:
        if not callable(launch):
            for arrays in (launch[3], launch[4]):  # a launch record: kernel, dim, max_blocks, inputs, outputs, ...
                for array in arrays:
                    if isinstance(array, wp.array):
                        array.mark_init()
    for array in tape.gradients:
        if isinstance(array, wp.array):
            array.mark_init()


def type_size_in_bytes(dtype: Any) -> int:
    """Bytes of one element of a Warp dtype (``wp.vec3``: 12)."""
    return int(_wp_types.type_size_in_bytes(dtype))


VERBOSE_ENV = "DIFFENVS_WARP_VERBOSE"
"""Set this environment variable (to anything) to keep Warp's own messages: its start-up banner, its
module-load lines and, on a machine without an NVIDIA driver, its "Could not find or load the
NVIDIA CUDA driver" warning."""

_DRIVER_WARNING = "Could not find or load the NVIDIA CUDA driver"


def quiet_warp() -> None:
    """Quiet Warp for diffenvs' users (the CLI and every env call it; idempotent): its log level at
    warnings and errors (no banner, no module-load lines) unless the user has set another level, and
    Warp started with its native "no CUDA driver" line kept off stderr (the expected state of a CPU
    machine; other messages of the start pass through). The way back: :data:`VERBOSE_ENV`, or
    ``wp.config.log_level = 20`` after the first env."""
    if os.environ.get(VERBOSE_ENV):
        return
    if wp.config.log_level == 20:  # Warp's default: nobody chose it
        wp.config.log_level = 30
    if _wp_context.runtime is not None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            wp.init()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    kept = "".join(line for line in text.splitlines(keepends=True) if _DRIVER_WARNING not in line)
    if kept:
        sys.stderr.write(kept)


__all__ = [
    "GRAD_ALIGNMENT",
    "VERBOSE_ENV",
    "forget_reads",
    "pooled_grads",
    "quiet_warp",
    "record_adjoint",
    "recording_tape",
    "type_size_in_bytes",
    "walk_arrays",
]
