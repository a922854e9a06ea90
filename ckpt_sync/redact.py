"""The one home for keeping secrets out of what we print or log.

Every error and warning line of the CLI, every log record (text or JSON) and ``config show`` pass
through ``redact``: anything shaped like a Fernet key (44 url-safe base64 characters, what a user
may paste where a key *file* is expected), the password of a URL (``http://user:pw@host``) and the
usual secret parameters of connection strings and signed URLs are replaced by ``<redacted>``.
Other modules that build a line for the user call ``redact`` rather than growing their own rules.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"

# A Fernet key: 32 bytes as url-safe base64 (43 characters and "="), standing alone.
_FERNET_KEY = re.compile(r"(?<![A-Za-z0-9_\-+/])[A-Za-z0-9_\-]{43}=?(?![A-Za-z0-9_\-+/=])")
# scheme://user:password@host -> scheme://user:<redacted>@host (the user name is not secret)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:)(?P<secret>[^\s/@]+)(?=@)")
# AccountKey=...; SharedAccessSignature=...; ?sig=...&X-Amz-Signature=...; password=...
_SECRET_PARAM = re.compile(
    r"(?i)(?P<head>\b(?:AccountKey|SharedAccessSignature|sig|signature|X-Amz-Signature|X-Amz-Credential|"
    r"X-Amz-Security-Token|password|passwd|secret|token|client_secret|aws_secret_access_key)=)(?P<secret>[^;&\s'\"]+)"
)


def redact(text: str) -> str:
    """``text`` with every key-shaped string and credential replaced by ``<redacted>``."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + REDACTED, text)
    text = _SECRET_PARAM.sub(lambda m: m["head"] + REDACTED, text)
    return _FERNET_KEY.sub(REDACTED, text)


def redact_url(url: str) -> str:
    """Hide a password (or token) written into a URL's user part; the rest is not secret."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if parts.password is None and not (parts.username and "@" in parts.netloc):
        return redact(url)
    host = parts.netloc.rpartition("@")[2]
    return redact(urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}")))
