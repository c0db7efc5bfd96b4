"""The thin shell: settings, Faust app and agents, Redis, Kafka, CLI and the embedded stack."""

import os

# One thread for numpy's BLAS (OpenBLAS, MKL, OpenMP) in every process of the shell, set before
# numpy loads: the trainer's Lloyd passes and distances are matmuls of a few thousand rows by a
# few dozen columns, for which a second thread only waits on the first; on 2 shared cores
# beside the broker and Redis its spin made one pass over 5,000 customers take 280 ms instead
# of 3 ms. Set by hand to override (the variables are read once, when numpy first loads).
for _variable in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
