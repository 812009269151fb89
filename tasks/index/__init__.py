"""The index stage."""
