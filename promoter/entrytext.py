"""An artifact entry's text in metadata.json, made by hand (issue 15, seventh round).

Every entry's text is made once (`metatext.RunTexts` keeps it); pydantic's dump of an
entry, with its time formatted by a Python call, was most of that. For an entry whose
strings are all ASCII, JSON's string escapes are one set, pydantic's and `json`'s alike,
so the same bytes are made here in a third of the time (tests/test_metadata compares
them: every control character, quotes, backslashes, times at datetime's ends). Any other
entry is pydantic's to write.
"""

from __future__ import annotations

from json.encoder import encode_basestring
from typing import Any

from promoter.clock import format_time

__all__ = ["ascii_entry_text"]


def ascii_entry_text(entry: Any) -> str | None:
    """An ArtifactEntry as pydantic's `model_dump_json(indent=2)` writes it, indented by two
    levels as in metadata.json's list; None unless every string is ASCII."""
    fields = entry.__dict__
    name, path, agent, kind, sha = (fields["filename"], fields["path"], fields["agent_id"],
                                    fields["content_type"], fields["sha256"])
    if not (name.isascii() and path.isascii() and agent.isascii() and kind.isascii()
            and (sha is None or sha.isascii()) and type(fields["size_bytes"]) is int):
        return None
    digest = "" if sha is None else f',\n      "sha256": {encode_basestring(sha)}'
    if (changed := fields["source_changed_at"]) is not None:  # absent in older entries
        digest += f',\n      "source_changed_at": "{format_time(changed)}"'
    return (f'    {{\n      "filename": {encode_basestring(name)},\n      "path": '
            f'{encode_basestring(path)},\n      "agent_id": {encode_basestring(agent)},\n'
            f'      "generated_at": "{format_time(fields["generated_at"])}",\n      "size_bytes": '
            f'{fields["size_bytes"]},\n      "content_type": {encode_basestring(kind)}{digest}'
            "\n    }")
