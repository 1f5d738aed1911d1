"""Whether the file system under the harness's temporary folder is an ext4 without a journal.

It matters to every figure: on a journal-less ext4 each new inode skips, one by one, the
free inodes of its group freed in the last 60 s (360 s while their inode-table block is
still dirty; `recently_deleted()` in fs/ext4/ialloc.c), so for a minute or more after mass
deletions every file creation on the machine costs 2-5x the CPU. Read from /proc/mounts,
/sys/fs/ext4/<dev>/journal_task ("<none>": no journal) and /proc/fs/jbd2/<dev>-*; any of
them may be missing (containers, other file systems): the answer is then None, never an
exception.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["describe", "line", "mount_of"]


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash in octal (\\040 ...)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_of(path: str, mounts: str = "/proc/mounts") -> tuple[str, str, str] | None:
    """(device, mount point, fstype) of the mount holding path: the longest mount point
    above it, the last such line winning (a later mount hides an earlier one)."""
    real = os.path.realpath(path)
    best: tuple[str, str, str] | None = None
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        dev, mnt, fstype = _unescape(fields[0]), _unescape(fields[1]), fields[2]
        inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
        if inside and (best is None or len(mnt) >= len(best[1])):
            best = (dev, mnt, fstype)
    return best


def _kernel_names(device: str, path: str, sys_dev_block: str) -> list[str]:
    """The names the kernel may file the device under in /sys/fs/ext4: the device node's
    (through symlinks: /dev/mapper/x -> dm-0), then the one of the path's st_dev
    (/dev/root names nothing in /sys)."""
    names: list[str] = []
    if device.startswith("/dev/"):
        names.append(os.path.basename(os.path.realpath(device)))
        names.append(os.path.basename(device))
    try:
        st = os.stat(path)
        link = Path(sys_dev_block) / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        names.append(os.path.basename(os.path.realpath(link)))
    except OSError:
        pass
    return [n for i, n in enumerate(names) if n and n not in names[:i]]


def describe(
    path: str,
    mounts: str = "/proc/mounts",
    sys_ext4: str = "/sys/fs/ext4",
    jbd2: str = "/proc/fs/jbd2",
    sys_dev_block: str = "/sys/dev/block",
) -> dict[str, Any]:
    """{"fstype", "device", "mount", "journal": True | False | None, "how"} for path's
    file system; journal None when it is not ext4 or nothing says."""
    found = mount_of(path, mounts)
    if found is None:
        return {"fstype": None, "device": None, "mount": None, "journal": None,
                "how": f"no mount of {path} in {mounts}"}
    device, mnt, fstype = found
    out: dict[str, Any] = {"fstype": fstype, "device": device, "mount": mnt,
                           "journal": None, "how": "not ext4"}
    if fstype != "ext4":
        return out
    out["how"] = f"neither {sys_ext4}/<dev>/journal_task nor {jbd2}/<dev>-* says"
    for name in _kernel_names(device, path, sys_dev_block):
        task = Path(sys_ext4) / name / "journal_task"
        try:
            text = task.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            text = ""
        if text:
            out.update(device_name=name, journal=text != "<none>", how=f"{task}: {text}")
            return out
        try:
            held = sorted(p.name for p in Path(jbd2).glob(f"{name}-*"))
        except OSError:
            held = []
        if held:
            out.update(device_name=name, journal=True, how=f"{jbd2}/{held[0]} exists")
            return out
    return out


def line(info: dict[str, Any]) -> str:
    """One line for the console."""
    where = f"{info.get('device')} on {info.get('mount')} ({info.get('fstype')})"
    if info.get("journal") is False:
        return (f"tmp file system: {where}: ext4 WITHOUT a journal ({info['how']}): every "
                "create skips the inodes freed in the last 60 s (360 s while unsynced)")
    if info.get("journal") is True:
        return f"tmp file system: {where}: ext4 with a journal ({info['how']})"
    return f"tmp file system: {where}: journal unknown ({info.get('how')})"
