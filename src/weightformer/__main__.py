"""`python -m weightformer COMMAND ...`, also under torchrun: `torchrun --nproc_per_node=N -m weightformer train`."""

import sys

from weightformer.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
