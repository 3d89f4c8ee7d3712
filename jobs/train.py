"""The training job as a script, for Ray's own CLI; the job itself is ``python -m atoll.train`` (see there).

    atoll train jobs/configs/train.yaml                      # the usual way (it submits atoll.train)
    ray job submit --working-dir . -- python jobs/train.py -c jobs/configs/train.yaml --set epochs=3
    python jobs/train.py -c jobs/configs/train.yaml          # run the driver here, on a running cluster
"""

import sys

from atoll.train.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
