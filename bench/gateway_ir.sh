#!/bin/sh
# Instructions per request of bench/gateway_inproc.py under callgrind: the
# difference between a run of 2,000 and one of 6,000 requests, over 4,000
# (start-up and warm-up cancel out). Repeatable to within ~0.1% whatever
# the machine's load. Usage: bench/gateway_ir.sh  (from the repository root)
set -e
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python -m bench.gateway_inproc "$1" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
small=$(count 2000)
large=$(count 6000)
echo "$(( (large - small) / 4000 )) instructions per request"
