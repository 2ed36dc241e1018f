#!/bin/sh
# Instructions per request of bench/gateway_inproc.py under callgrind: the
# difference between a run of 2,000 and one of 6,000 requests, over 4,000
# (start-up and warm-up cancel out). Repeatable to within ~0.1% whatever
# the machine's load. Usage: bench/gateway_ir.sh [--telemetry]  (from the
# repository root; --telemetry: with the gateway's tracing and golden signals)
set -e
flags="$*"
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python -m bench.gateway_inproc "$1" $flags 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
# Byte-compiled first: a source file edited meanwhile would otherwise be
# parsed and compiled inside one of the two counted runs.
.venv/bin/python -m bench.gateway_inproc 200 $flags >/dev/null
small=$(count 2000)
large=$(count 6000)
echo "$(( (large - small) / 4000 )) instructions per request"
