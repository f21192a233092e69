"""Scenario files: the TOML sections, their validation and the protocol grammar."""
