"""Builds parkfleet's images without a container engine: ``make images`` runs this.

``hack/images/build.py build [NAME...]`` builds into ``.cache/images/`` (see the
``pfimage`` package beside this file for how); ``unpack`` and ``run`` turn an archive back
into a root filesystem and run it as a container would (the images' tests use them).
Run it with the venv's Python (it needs ``packaging`` and pip), as root.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pfimage.build import main

if __name__ == "__main__":
    sys.exit(main())
