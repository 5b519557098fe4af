"""The Hugging Face Hub, probed before it is asked.

Offline, the Hub's clients (transformers', datasets', huggingface_hub's) retry for half a minute or more, printing a
warning at every try, before they fail. A TCP connection tells in seconds at most (at once without DNS):
`hub_reachable()`; and `offline_unless_reachable()` has the clients read their local cache alone for a block, so an
offline run either finds what it needs there or is refused in one line at once. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
from collections.abc import Iterator

from common.compat import hub_offline

HF_ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def can_reach(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to `url`'s host opens within `timeout` seconds (False at once without DNS)."""
    parsed = urllib.parse.urlparse(url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def is_hub_name(source: str | os.PathLike) -> bool:
    """Whether `source`, which names no directory, reads as a hub name ("name" or "namespace/name") rather than a
    wrong local path (an existing file, one starting with ".", "/" or "~", or one of more than two parts)."""
    text = str(source)
    return not (os.path.exists(text) or text.startswith((".", "/", "~")) or text.count("/") > 1)


def hub_reachable() -> bool:
    """Whether the Hub (`HF_ENDPOINT`) answers."""
    return can_reach(HF_ENDPOINT)


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Within the block, the Hub's clients read only their local cache when the Hub cannot be reached; yields
    whether it can."""
    if hub_reachable():
        yield True
        return
    with hub_offline():
        yield False
