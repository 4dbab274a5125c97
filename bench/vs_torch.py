"""normkit vs the NumPy reference vs PyTorch CPU: the same as ``python -m normkit bench``.

python bench/vs_torch.py [--quick] [--threads N] [--out DIR]
"""

import argparse
import sys

from normkit import bench

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
bench.add_arguments(parser)
sys.exit(bench.main(parser.parse_args()))
