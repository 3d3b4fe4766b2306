"""Camera credentials never leave the process: every URL that is shown is masked.

Rule: ``scheme://user:password@host/path`` is shown as
``scheme://user:***@host/path`` (a URL with a user and no password keeps
the user: it is no secret); the password runs to the last ``@`` of the
authority, as FFmpeg reads it; ``password=``/``pwd=``/``token=``... query
parameters are masked too. The real URL is used for one thing only,
connecting. Anything that may quote a URL — a status listing, an exception
message, FFmpeg's error text, a log line — goes through :func:`mask_url` or
:func:`mask_text` before it leaves the source. Files that must keep the real
URL (the service's stream list) are written owner-readable only (the atomic
writer creates them 0600).
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://userinfo@ where userinfo holds a ':' (user:password). The password runs to the
# *last* '@' of the authority, as FFmpeg splits it ("Pa@ss99" is one password).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<secret>[^\s/?#]*)@")
# Cameras that take credentials as query parameters (``...?user=admin&password=...``).
_PARAM = re.compile(r"(?i)(?P<key>\b(?:password|passwd|pwd|pass|token|auth)=)(?P<secret>[^&\s#]+)")


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (unchanged when it has none)."""
    return mask_text(url)


def mask_text(text: str) -> str:
    """Every ``scheme://user:password@`` in free text (error messages, logs) masked."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _PARAM.sub(lambda m: f"{m['key']}{MASK}", text)
