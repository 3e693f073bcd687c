"""Value types shared by every stage: replies, verdicts, envelopes, plans, errors. No I/O."""
