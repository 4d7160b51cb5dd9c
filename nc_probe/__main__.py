import sys

from nc_probe.entry import main

sys.exit(main())
