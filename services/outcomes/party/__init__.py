"""The party's own page (CONTRACT.md 3.1)."""
