import sys

from viewstream.cli import main

sys.exit(main())
