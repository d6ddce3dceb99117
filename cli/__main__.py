"""`python -m vtnetmap_cli`: the same as the `vtnetmap` command."""

from .main import main

main()
