"""The sweep job as a script, for Ray's own CLI; the job itself is ``python -m atoll.tune`` (see there).

    atoll tune jobs/configs/sweep.yaml                       # the usual way (it submits atoll.tune)
    ray job submit --working-dir . -- python jobs/tune.py -c jobs/configs/sweep.yaml --set num_samples=4
    python jobs/tune.py -c jobs/configs/sweep.yaml --resume  # continue an interrupted sweep
"""

import sys

from atoll.tune.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
