"""`ray start` for one more node of a cluster kept on 127.0.0.1 (``local-cluster.sh``).

Ray's single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) binds every port of a node
to the loopback interface, but its ``ray start --address`` refuses to add a node; Ray's normal
mode adds the node but replaces 127.0.0.1 by the machine's address, so that node's raylet,
agents and metrics listen on every interface. This runs ``ray start`` with the refusal lifted
and 127.0.0.1 kept, in this process only: the processes it starts read the variable from the
environment (0) and stay on loopback. The two names are Ray's private ones, pinned with Ray in
constraints.txt; if they move this stops with an error rather than bind more widely.
"""

import sys

import ray._private.ray_constants as ray_constants
import ray._private.services as ray_services
from ray.scripts.scripts import main

if ray_constants.ENABLE_RAY_CLUSTER or not hasattr(ray_services, "resolve_ip_for_localhost"):
    sys.exit("loopback-node.py: run with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 on Ray 2.60")
ray_constants.ENABLE_RAY_CLUSTER = True  # only the check "may this node join" reads it here
ray_services.resolve_ip_for_localhost = lambda host: host
sys.argv[0] = "ray"
main()
