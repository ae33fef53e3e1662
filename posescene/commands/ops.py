"""CLI sub-commands for the ops area (see docs/architecture.md)."""
