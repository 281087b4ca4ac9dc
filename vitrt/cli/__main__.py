import sys

from vitrt.cli import main

sys.exit(main())
