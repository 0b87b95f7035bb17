#!/bin/sh
# Relays an AWS spot interruption notice to the render workers of this node: polls the
# instance metadata (IMDSv2) every 5 s and, once spot/instance-action is there (two
# minutes before the instance goes), SIGTERMs the render workers, which checkpoint every
# synthesis they hold and exit; the render retries their items elsewhere, resumed.
# Started by cluster/aws-gpu.yaml's worker_setup_commands. NST_IMDS_URL and NST_SPOT_RELAY
# replace the metadata address and the relay (for tests).
set -u
imds="${NST_IMDS_URL:-http://169.254.169.254/latest}"
relay="${NST_SPOT_RELAY:-python -m nst_engine.distributed.preemption}"
while :; do
    token=$(wget -q -O - --method=PUT --header="X-aws-ec2-metadata-token-ttl-seconds: 300" "$imds/api/token")
    if wget -q -O /dev/null --header="X-aws-ec2-metadata-token: $token" "$imds/meta-data/spot/instance-action"; then
        echo "spot interruption notice: stopping the render workers"
        $relay
        exit 0
    fi
    sleep "${NST_SPOT_POLL_SECONDS:-5}"
done
