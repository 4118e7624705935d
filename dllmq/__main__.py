"""`python -m dllmq ...`: see dllmq/cli.py."""

import sys

from .cli import main

sys.exit(main())
