"""``python -m service.cli``: the ``bitplan`` command."""
import sys

from service.cli import main

sys.exit(main())
