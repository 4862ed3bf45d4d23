"""`python tests/support/synthetic_cnntrain.py ARGS...` is `cnntrain ARGS...` for the child
processes of tests: it takes MNIST's checksum table from $CNNTRAIN_TEST_MNIST_TABLE (JSON, as
tests.support.mnist_server.SyntheticMnist.table), so those processes accept the synthetic MNIST the
tests serve on loopback."""

import json
import os
import sys


def main():
    import cnntrain.data.download
    from cnntrain.cli import main as cnntrain_main

    table = json.loads(os.environ["CNNTRAIN_TEST_MNIST_TABLE"])
    cnntrain.data.download.MNIST_FILES = {name: tuple(entry) for name, entry in table.items()}
    sys.argv[0] = "cnntrain"
    cnntrain_main()


if __name__ == "__main__":
    main()
