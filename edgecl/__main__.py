"""``python -m edgecl``: the command line without an installed ``edgecl`` script."""

from edgecl.cli import cli

cli()
