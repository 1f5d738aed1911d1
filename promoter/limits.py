"""The daemon's descriptor limit: raised to what the system allows it (issue 15 probe).

A burst holds descriptors by the thousand (each batch's unnamed copies and folders, the
sources, the watches' reader, the logs). systemd's default `LimitNOFILE=1024:524288` is
meant to be raised by a program that needs more, to its hard limit, as Go's runtime
does at start; a soft limit left at 1,024 made each batch commit in smaller pieces and,
with four workers, ran out. An operator's lower hard limit (`ulimit -Hn`, `LimitNOFILE=`)
is kept: the batches then share what it gives (`batchcopy.SHARE`).
"""

from __future__ import annotations

import resource

__all__ = ["CEILING", "raise_descriptor_limit"]

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
