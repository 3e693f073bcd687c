"""The SMTP conformance list: `.smtp` session scripts and their grammar (script.py)."""
