"""flowar (filled by later issues)."""
