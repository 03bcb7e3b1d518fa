"""compare (filled by later issues)."""
