"""CLI sub-commands for the world area (see docs/architecture.md)."""
