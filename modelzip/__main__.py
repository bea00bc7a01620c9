"""`python -m modelzip` is the `modelzip` command (so `torchrun -m modelzip` works too)."""
import sys

from .cli import main

sys.exit(main())
