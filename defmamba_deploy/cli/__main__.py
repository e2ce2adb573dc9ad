"""`python -m defmamba_deploy.cli ...`: the same app as the `defmamba-deploy` console script."""
from . import main

main()
