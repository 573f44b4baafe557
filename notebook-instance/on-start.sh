#!/bin/bash
# Lifecycle configuration for a SageMaker notebook instance (on-start): SageMaker runs it as
# root at every start, the first one included. Only /home/ec2-user/SageMaker survives a stop and
# start; notebook 0.0 builds the workshop's environment there. This script brings back what
# that environment needs from outside that volume, and nothing slow: SageMaker fails the
# start of an instance whose lifecycle script runs longer than 5 minutes.
set -euo pipefail
ENVS_DIR=${WORKSHOP_ENVS_DIR:-/home/ec2-user/SageMaker/.envs}
NOTEBOOK_USER=${WORKSHOP_NOTEBOOK_USER:-ec2-user}

# 1. The environment is a venv over python3.11, an Amazon Linux 2023 package: the root volume
#    is new after a start, so install it again (a no-op when it is there).
if ! command -v python3.11 >/dev/null 2>&1; then
  dnf install -y -q python3.11
fi

# 2. The Jupyter kernels the notebooks name live in the user's home, which is not kept either:
#    one per environment 0.0 built (cifar-workshop, and cifar-workshop-sdk3 when asked for).
found=0
for python in "$ENVS_DIR"/*/bin/python; do
  [ -x "$python" ] || continue
  sudo -u "$NOTEBOOK_USER" -i "$python" -m workshop.kernel_env register
  found=1
done
[ "$found" = 1 ] || echo "no workshop environment in $ENVS_DIR yet: notebook 0.0 builds it"

# 3. Restart Jupyter after registering the kernel, as AWS's persistent-conda lifecycle sample
#    does, so its kernel list has it (--no-block: the script does not wait for the restart).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet jupyter-server.service; then
  systemctl --no-block restart jupyter-server.service
fi
