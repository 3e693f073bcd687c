"""Message parsing: raw RFC 5322 bytes in, the immutable `MessageFacts` the rules read out."""
