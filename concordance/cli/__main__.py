"""``python -m concordance.cli``: how supervisord-free launchers and tests start commands."""

import sys

from concordance.cli import main

sys.exit(main())
