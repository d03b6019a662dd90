"""`python -m bot.cli …` runs the `tunebot` command line."""

import sys

from .main import main

sys.exit(main())
