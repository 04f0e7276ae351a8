#!/usr/bin/env bash
# Install OpenMPI (openmpi-bin, libopenmpi-dev) from the distribution if
# mpirun or mpicc is missing. For the tests of the `openmpi` execution model;
# exits non-zero with "openmpi.sh: ERROR: ..." when it cannot install.
#
# Running it on the virtual Slurm nodes needs (see deploy/README.md):
#   OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  (as root)
#   OMPI_MCA_btl=self,tcp  (all virtual nodes share one /dev/shm)
set -euo pipefail

PROG="openmpi.sh"
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if command -v mpirun >/dev/null 2>&1 && command -v mpicc >/dev/null 2>&1; then
    exit 0
fi
apt_install openmpi-bin libopenmpi-dev
command -v mpirun >/dev/null 2>&1 && command -v mpicc >/dev/null 2>&1 \
    || die "OpenMPI installed but mpirun/mpicc are missing"
