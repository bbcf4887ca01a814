"""``python -m newsletter`` runs the command-line interface."""

from newsletter.cli import main

main()
