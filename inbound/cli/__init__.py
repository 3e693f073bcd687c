"""The command line: parse flags, call the stages, print results. No decisions here."""
