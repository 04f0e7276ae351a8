#!/usr/bin/env bash
# Install OpenMPI (openmpi-bin, libopenmpi-dev) from the distribution if
# mpirun or mpicc is missing. For the tests of the `openmpi` execution model;
# exits non-zero with "openmpi.sh: ERROR: ..." when it cannot install.
#
# Running it on the virtual Slurm nodes needs (see deploy/README.md):
#   OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  (as root)
#   OMPI_MCA_btl=self,tcp  (all virtual nodes share one /dev/shm)
set -euo pipefail

if command -v mpirun >/dev/null 2>&1 && command -v mpicc >/dev/null 2>&1; then
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || { echo "openmpi.sh: ERROR: no apt-get to install OpenMPI" >&2; exit 1; }
echo "openmpi.sh: installing OpenMPI (openmpi-bin, libopenmpi-dev)"
export DEBIAN_FRONTEND=noninteractive
pkgs=(openmpi-bin libopenmpi-dev)
if ! apt-get install -y -q --no-install-recommends "${pkgs[@]}"; then
    apt-get update -q && apt-get install -y -q --no-install-recommends "${pkgs[@]}" \
        || { echo "openmpi.sh: ERROR: apt-get could not install ${pkgs[*]}" >&2; exit 1; }
fi
command -v mpirun >/dev/null 2>&1 && command -v mpicc >/dev/null 2>&1 \
    || { echo "openmpi.sh: ERROR: OpenMPI installed but mpirun/mpicc are missing" >&2; exit 1; }
