import sys

from seproxy.cli.main import main

sys.exit(main())
