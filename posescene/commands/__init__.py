"""CLI sub-commands, one module per area; each registers on :data:`posescene.cli_app.app`."""
