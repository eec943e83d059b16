"""`python -m pipeline`: see pipeline.cli, whose `exit_status` is the one exit path of every command.

Only a Ctrl-C while that module is still being imported (TensorFlow, Beam) ends here: exit 130.
"""

import sys

try:
    from pipeline.cli import main
except KeyboardInterrupt:  # Ctrl-C while TensorFlow/Beam are still being imported
    print("error: interrupted (Ctrl-C)", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
