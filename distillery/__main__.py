"""`python -m distillery`: the same as the `distillery` command; the supervisor starts its
children this way so that they need no console script on PATH."""

from distillery.cli import main

raise SystemExit(main())
