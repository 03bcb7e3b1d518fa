"""var (filled by later issues)."""
