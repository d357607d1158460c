"""`python -m router.cli`: the same as the `dicom-router` console script."""

import sys

from router.cli.main import main

sys.exit(main())
