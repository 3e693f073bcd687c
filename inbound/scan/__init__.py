"""Verdicts about a spooled message: virus (clamd), spam (spamd), SPF/DKIM/DMARC (auth).

The daemon scanners (`clamd.py`, `spamd.py`) speak their protocols directly over asyncio (TCP
or a unix socket), stream the message from its file, and turn every outcome into a
`ScanResult`: a daemon that is down, slow or refuses the message gives `PROCESSING_FAILED` with
the reason, never an exception. This package decides verdicts only; it never reads rules,
replies to SMTP clients or writes the spool.
"""
