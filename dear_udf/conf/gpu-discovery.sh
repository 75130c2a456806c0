#!/usr/bin/env bash
# Spark GPU discovery script: prints the GPUs of this host as a ResourceInformation JSON.
ADDRS=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | sed -e 's/^/"/' -e 's/$/"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [${ADDRS}]}"
