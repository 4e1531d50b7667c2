"""Email addresses in text meant for others' eyes: masked, except the JSOC's own.

Error messages and progress lines may quote what the JSOC said, and the JSOC names the notify
address in some of its messages. Both the API layer and the command line mask them here, by
one rule.
"""

from __future__ import annotations

import re

__all__ = ["JSOC_CONTACTS", "mask_email", "mask_emails", "redact_url"]

JSOC_CONTACTS = frozenset({"jsoc@sun.stanford.edu", "jsoc_help@jsoc.stanford.edu"})
"""The JSOC's own help addresses, which its messages ask users to write to: never masked
(any other address in a message may be a user's, and is)."""

# Anything shaped like local@host, dotted or not (a rejected address is masked too), the
# host starting with a letter (so a cadence such as T/1h@12m is left alone). The
# bounded parts (RFC 5321 limits) keep a long input linear: unbounded ones backtracked over
# every start position, and a 100 kB argument took 19 s to mask.
_EMAIL_IN_TEXT = re.compile(r"[^\s@<>()\[\],;:/{}]{1,64}@[A-Za-z][A-Za-z0-9.-]{0,252}")


def mask_email(email: str) -> str:
    """Hide most of an address for logs: ``jane@example.org`` → ``j***@example.org``.

    Parameters
    ----------
    email
        An address (anything without ``@`` is masked entirely).

    Returns
    -------
    str
        The masked address.
    """
    local, sep, domain = email.partition("@")
    if not sep:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_emails(text: str) -> str:
    """``text`` with every email address masked (see :func:`mask_email`), except the JSOC's
    help addresses (:data:`JSOC_CONTACTS`); a user's address at Stanford is masked like any
    other."""

    if "@" not in text:
        return text

    def mask(match: re.Match[str]) -> str:
        address = match.group(0)
        return address if address.lower() in JSOC_CONTACTS else mask_email(address)

    return _EMAIL_IN_TEXT.sub(mask, text)


def redact_url(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part, if any, replaced by ``***``.

    A server URL may carry credentials for a proxy or mirror; messages show it without them.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{tail}"
