"""taskonomy-ray: Taskonomy (Zamir et al., CVPR 2018) on Ray."""

import os

__version__ = "0.1.0"

# Large CPU tensors (full-resolution decoder activations) on transparent huge pages: PyTorch's
# own switch, read at allocation time, so setting it here also covers Ray workers. It cut a
# paper-scale transfer head's training step by ~20% on a 2-core box (docs/benchmarks.md).
# Set THP_MEM_ALLOC_ENABLE=0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
