"""Configuration input: YAML with positions, and the constrained field types of config models."""
