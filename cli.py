#!/usr/bin/env python3
"""`python cli.py ...` from a checkout: the same Typer app as the `defmamba-deploy` console script."""
from defmamba_deploy.cli import main

if __name__ == "__main__":
    main()
