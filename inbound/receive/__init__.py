"""Receiving mail: the SMTP server. It asks a policy for every decision and never reads rules."""
