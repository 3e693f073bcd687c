"""Messages at and beyond the MIME limits (1,000 parts, 50 levels), each with x.exe last."""

from __future__ import annotations


def many_parts(count: int) -> bytes:
    """A multipart of `count` parts in all (itself included), the last one named x.exe."""
    leaves = [b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"] * (count - 2)
    leaves.append(b"--b\r\nContent-Disposition: attachment; filename=x.exe\r\n\r\nMZ\r\n")
    head = b"Subject: parts\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    return head + b"".join(leaves) + b"--b--\r\n"


def nested(depth: int) -> bytes:
    """x.exe `depth` levels below the message, in multiparts and message/rfc822 by turns."""
    inner = b"Content-Disposition: attachment; filename=x.exe\r\n\r\nMZ\r\n"
    for level in reversed(range(depth)):
        if level % 2:
            inner = b"Content-Type: message/rfc822\r\n\r\n" + inner
        else:
            b = b"b%d" % level
            inner = (
                b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n\r\n--" + b + b"\r\n"
                + inner + b"\r\n--" + b + b"--\r\n"
            )  # fmt: skip
    return b"Subject: deep\r\n" + inner
