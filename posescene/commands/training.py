"""CLI sub-commands for the training area (see docs/architecture.md)."""
