"""`python -m weightformer.train [--config NAME] [--key value ...]`, also under torchrun for data parallelism."""

import sys

from weightformer.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
