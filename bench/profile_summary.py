"""Summarise py-spy raw (collapsed stacks) output from `bench.run --profile DIR`.

    /work/venv/bin/python -m bench.profile_summary DIR/burst-promoter-50.txt [--top 12]

For each thread: samples, and the leaf frames (where the thread was, idle waits included:
the profile is recorded with --idle) with their share of that thread's samples. With
--frame NAME, also the share of each thread's samples that have NAME anywhere on the stack.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_IDLE_THREADS = ("pymain", "MainThread")


def load(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    """thread name -> [(frames outermost first, samples)]."""
    threads: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    with open(path) as f:
        for line in f:
            m = _LINE.match(line.rstrip("\n"))
            if not m:
                continue
            frames = m["stack"].split(";")
            head = frames[0]
            name = head.split(": ", 1)[1] if head.startswith("thread (") and ": " in head else head
            name = re.sub(r"_\d+$", "", name)  # pool threads: promoter-copy-writer_0 -> ..._writer
            threads[name].append((frames[1:], int(m["count"])))
    return threads


def summarise(path: Path, top: int, frames: list[str]) -> str:
    out = [f"# {path.name}"]
    threads = load(path)
    for name, stacks in sorted(threads.items(), key=lambda kv: -sum(c for _, c in kv[1])):
        total = sum(c for _, c in stacks)
        out.append(f"\n## {name}: {total} samples")
        leaves: Counter[str] = Counter()
        for stack, count in stacks:
            leaves[stack[-1] if stack else "?"] += count
        for leaf, count in leaves.most_common(top):
            out.append(f"  {count / total:6.1%}  {leaf}")
        for wanted in frames:
            hit = sum(c for stack, c in stacks if any(wanted in fr for fr in stack))
            out.append(f"  on stack {wanted!r}: {hit / total:.1%}")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--frame", action="append", default=[], help="share of samples with this frame")
    args = p.parse_args()
    for path in args.files:
        print(summarise(path, args.top, args.frame))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
