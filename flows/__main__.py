"""``python -m flows <command>``: the ``posescene`` command (library stages + serve, lock-status)."""

from flows.cli import main

main()
