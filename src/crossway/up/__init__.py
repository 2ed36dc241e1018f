"""`crossway up`: a whole system from one `crossway.yaml` — control plane, gateway and
supervised services — on one machine.

    spec.py       the file's models and its JSON Schema
    load.py       reading the file, every problem with its line and column
    project.py    the file resolved against its folder and the command line
    policy.py     when a replica is restarted (pure)
    ports.py      ports for replicas
    health.py     readiness probes
    logs.py       the multiplexed terminal, ring buffers and log files
    supervisor.py the replicas' processes, scaling and rolling restarts
    api.py        /v1/processes on the control plane
    lock.py       one `up` per folder
    run.py        putting it together
"""

from crossway.up.load import Problem, UpFileError, load_file, load_text
from crossway.up.project import Overrides, Project, load_project
from crossway.up.spec import UpFile, json_schema

__all__ = [
    "Overrides",
    "Problem",
    "Project",
    "UpFile",
    "UpFileError",
    "json_schema",
    "load_file",
    "load_project",
    "load_text",
]
