"""The daemon's process tuning: its descriptor limit, raised to what the system allows it
(issue 15 probe), and its cyclic garbage collector, kept off start-up's objects.

A burst holds descriptors by the thousand (each batch's unnamed copies and folders, the
sources, the watches' reader, the logs). systemd's default `LimitNOFILE=1024:524288` is
meant to be raised by a program that needs more, to its hard limit, as Go's runtime
does at start; a soft limit left at 1,024 made each batch commit in smaller pieces and,
with four workers, ran out. An operator's lower hard limit (`ulimit -Hn`, `LimitNOFILE=`)
is kept: the batches then share what it gives (`batchcopy.SHARE`).

The collector: a burst makes and drops objects by the thousand a second, and each of
CPython's collections of the older generations walked every object the imports and the
start-up left (tens of thousands, none ever garbage): 5 % of a 4 KiB file's CPU (issue 15,
round 6). `tune_gc` freezes those (`gc.freeze`) and collects the young generation every
`GC_YOUNG` allocations rather than every 700; cycles are still collected.
"""

from __future__ import annotations

import gc
import resource

__all__ = ["CEILING", "GC_YOUNG", "raise_descriptor_limit", "tune_gc"]

GC_YOUNG = 20_000  # allocations between collections of the young generation (CPython: 700)

CEILING = 65536  # enough for any batch; more only grows the kernel's table for nothing


def raise_descriptor_limit(ceiling: int = CEILING) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE toward the hard one, at most to `ceiling`; never lower
    it. Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):  # a sandbox may refuse: the batches share the rest
            return soft, soft
        return soft, target
    return soft, soft


def tune_gc(young: int = GC_YOUNG) -> None:
    """At `promoter run`'s start, its imports done: what exists now leaves the collector's
    generations for good, and the young generation is collected every `young` allocations
    (never less often than CPython's own threshold). The older generations' are CPython's."""
    gc.freeze()
    first, second, third = gc.get_threshold()
    gc.set_threshold(max(first, young), second, third)
