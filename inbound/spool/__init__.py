"""The durable spool: messages on disk between the 250 reply and the last action (SPEC §7)."""
