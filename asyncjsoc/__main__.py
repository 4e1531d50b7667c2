"""``python -m asyncjsoc``: the command line."""

from asyncjsoc.cli import main

raise SystemExit(main())
