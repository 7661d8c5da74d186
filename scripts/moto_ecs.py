#!/usr/bin/env python3
"""moto_server with fidelity patches to its ECS backend, for edgemesh's tests.

Usage: moto_ecs.py PORT [--log FILE] [--host ADDR]

The SDK talks the real AWS wire protocol to this server; only moto's ECS *model* is patched
where moto 5.2 does not do what ECS does. Every patch names the real behaviour it reproduces.
With --log, every request's action (X-Amz-Target or Action=) is appended to FILE as one line
("ecs ListTasks"), so tests can count API calls.
"""

import ipaddress
import itertools
import sys
import threading
import time

from moto.ec2.models import ec2_backends
from moto.ecs import models as ecs
from moto.moto_api import state_manager

# ECS: a task stays RUNNING until it is stopped. moto advances a task's state every time it
# is described (RUNNING -> DEACTIVATING -> STOPPING ...), so a poller would see tasks die.
state_manager.set_transition(
    model_name="ecs::task", transition={"progression": "manual", "times": 10**9}
)

from moto.ec2.models.elastic_network_interfaces import NetworkInterface

if not hasattr(NetworkInterface, "private_dns_name"):
    # EC2: every ENI has a private DNS name (moto 5.2 lacks the attribute, so creating an
    # awsvpc task inside CreateService answered 500).
    NetworkInterface.private_dns_name = property(
        lambda self: "ip-" + str(self.private_ip_address).replace(".", "-") + ".ec2.internal"
    )

_orig_task_init = ecs.Task.__init__
_host_ports = itertools.count(32768)  # ECS's default ephemeral host port range starts here
_eni_ips = {}  # subnet id -> iterator over its host addresses
_lock = threading.Lock()


def _subnet_ip(account_id, region, subnet_id):
    # ECS: an awsvpc task's ENI gets a private address from its subnet (moto: a random 10.x).
    with _lock:
        if subnet_id not in _eni_ips:
            subnet = ec2_backends[account_id][region].get_subnet(subnet_id)
            hosts = ipaddress.ip_network(subnet.cidr_block).hosts()
            next(hosts)  # the first address is the VPC router's
            _eni_ips[subnet_id] = hosts
        return str(next(_eni_ips[subnet_id]))


def _task_init(self, cluster, task_definition, *args, **kwargs):
    _orig_task_init(self, cluster, task_definition, *args, **kwargs)
    # ECS: a task has one container per container definition (moto: the first one only).
    self.containers = []
    for cdef in task_definition.container_definitions:
        c = ecs.Container(task_definition)
        c.name = cdef.get("name")
        c.image = cdef.get("image")
        c.last_status = "RUNNING"
        # ECS's Container shape has cpu and memory as strings (moto: integers, which strict
        # clients such as the Rust SDK refuse to parse).
        c.cpu = str(cdef.get("cpu", 0))
        c.memory = str(cdef.get("memory", cdef.get("memoryReservation", 0)))
        c.network_bindings = []
        mode = task_definition.network_mode or "bridge"
        for pm in cdef.get("portMappings", []) or []:
            cport = int(pm["containerPort"])
            if mode == "bridge":
                # ECS: bridge mode maps a container port to the host port it asks for, or to
                # an ephemeral one when hostPort is 0 or absent (moto: no networkBindings).
                hport = int(pm.get("hostPort") or 0) or next(_host_ports)
            elif mode == "host":
                hport = cport
            else:
                continue  # awsvpc: no bindings, the ENI address and container port are used
            c.network_bindings.append(
                {
                    "bindIP": "0.0.0.0",
                    "containerPort": cport,
                    "hostPort": hport,
                    "protocol": pm.get("protocol", "tcp"),
                }
            )
        self.containers.append(c)
    for att in self.attachments:
        details = {d["name"]: d for d in att["details"]}
        if "subnetId" in details and "privateIPv4Address" in details:
            ip = _subnet_ip(
                self._account_id, self.region_name, details["subnetId"]["value"]
            )
            details["privateIPv4Address"]["value"] = ip
            eni = ec2_backends[self._account_id][self.region_name].get_network_interface(
                details["networkInterfaceId"]["value"]
            )
            eni.private_ip_address = ip
            for c in self.containers:
                c.network_interfaces = [
                    {"attachmentId": att["id"], "privateIpv4Address": ip}
                ]


ecs.Task.__init__ = _task_init

_orig_requirements = ecs.EC2ContainerServiceBackend._calculate_task_resource_requirements


def _requirements(task_definition):
    req = _orig_requirements(task_definition)
    if task_definition.network_mode == "awsvpc":
        # ECS: awsvpc tasks listen on their own ENI and reserve no host port.
        req["PORTS"] = []
    else:
        # ECS: hostPort 0 asks for an ephemeral port; it reserves nothing in advance (moto:
        # reserves "port 0", so a second task of the service never fits on the instance).
        req["PORTS"] = [p for p in req["PORTS"] if p]
    return req


ecs.EC2ContainerServiceBackend._calculate_task_resource_requirements = staticmethod(_requirements)

_orig_create_service = ecs.EC2ContainerServiceBackend.create_service
_orig_update_service = ecs.EC2ContainerServiceBackend.update_service
_orig_delete_service = ecs.EC2ContainerServiceBackend.delete_service
_orig_list_tasks = ecs.EC2ContainerServiceBackend.list_tasks


def _service_tasks(backend, cluster_name, service_name):
    return [
        t
        for t in backend.tasks.get(cluster_name, {}).values()
        if t.group == f"service:{service_name}" and t.desired_status == "RUNNING"
    ]


def _launch(backend, service, count, task_definition_arn):
    # ECS: the service scheduler starts tasks with group "service:NAME" and startedBy the
    # deployment id (moto: a service starts no task at all).
    if count <= 0:
        return []
    nc = service.network_configuration or None
    launch = service.launch_type if service.launch_type in ("EC2", "FARGATE") else "EC2"
    return backend.run_task(
        service.cluster_name,
        task_definition_arn,
        count,
        None,
        "ecs-svc/edgemesh-test",
        None,
        launch,
        networking_configuration=nc,
        group=f"service:{service.name}",
    )


def _stop(backend, service, tasks, reason):
    for t in tasks:
        backend.stop_task(service.cluster_name, t.task_arn, reason)


def _task_def_arn(service):
    td = service.task_definition
    return td if isinstance(td, str) else td.arn


def _serialized(f):
    # The server answers requests on threads, and moto's models are not thread-safe: two
    # CreateService calls at once made _task_init's ENI lookup fail ("dictionary changed size
    # during iteration") after some of the service's tasks had started, and answer 500; the
    # SDK's retry then started them again (1,066 calls and 5,176 tasks for 1,000 services of
    # 5). ECS does neither, so the calls that start or stop tasks run one at a time.
    def run(*args, **kwargs):
        with _model_lock:
            return f(*args, **kwargs)

    return run


_model_lock = threading.RLock()


@_serialized
def create_service(self, cluster_str, service_name, desired_count, *args, **kwargs):
    service = _orig_create_service(
        self, cluster_str, service_name, desired_count, *args, **kwargs
    )
    if service.task_definition is not None:
        _launch(self, service, desired_count or 0, _task_def_arn(service))
    return service


@_serialized
def update_service(self, props):
    cluster = props.get("cluster", "default")
    name = props["service"].split("/")[-1]
    new_td = props.get("task_definition")
    service = _orig_update_service(self, dict(props))
    running = _service_tasks(self, service.cluster_name, name)
    want = service.desired_count
    if new_td:
        # ECS rolling deployment with minimumHealthyPercent 100: start the new revision's
        # tasks, then stop the old ones (moto: only records the new task definition).
        td_arn = self.describe_task_definition(new_td).arn
        old = [t for t in running if t.task_definition_arn != td_arn]
        current = [t for t in running if t.task_definition_arn == td_arn]
        _launch(self, service, want - len(current), td_arn)
        _stop(self, service, old, "Deployment: replaced by a new revision")
    else:
        # ECS: a changed desired count starts or stops tasks (moto: only the counters).
        if len(running) < want:
            _launch(self, service, want - len(running), _task_def_arn(service))
        elif len(running) > want:
            _stop(self, service, running[want:], "Scaling activity: desired count lowered")
    del cluster
    return service


@_serialized
def delete_service(self, cluster_name, service_name, force):
    service = self._get_service(cluster_name, service_name)
    # ECS: deleting a service (forced or scaled to zero) stops its tasks.
    _stop(self, service, _service_tasks(self, service.cluster_name, service.name), "Service deleted")
    return _orig_delete_service(self, cluster_name, service_name, force)


def list_tasks(self, cluster_str=None, container_instance=None, family=None,
               started_by=None, service_name=None, desiredStatus=None):
    tasks = _orig_list_tasks(
        self, cluster_str, container_instance, family, started_by, None, desiredStatus
    )
    if service_name:
        # ECS: ListTasks(serviceName) lists that service's tasks (moto: ignores the filter).
        name = service_name.split("/")[-1]
        tasks = [t for t in tasks if t.group == f"service:{name}"]
    return tasks


from moto.ecs.responses import EC2ContainerServiceResponse
from moto.core.responses import ActionResult

_orig_list_tasks_response = EC2ContainerServiceResponse.list_tasks


def list_tasks_response(self):
    # ECS: ListTasks answers at most maxResults (default and maximum 100) ARNs per page with a
    # nextToken (moto: every task in one answer), so pollers make one call per 100 tasks.
    result = _orig_list_tasks_response(self)
    arns = result.result["taskArns"]
    size = min(int(self._get_param("maxResults") or 100), 100)
    start = int(self._get_param("nextToken") or 0)
    page = {"taskArns": arns[start : start + size]}
    if start + size < len(arns):
        page["nextToken"] = str(start + size)
    return ActionResult(page)


EC2ContainerServiceResponse.list_tasks = list_tasks_response

_orig_create_service_response = EC2ContainerServiceResponse.create_service
_client_tokens = {}  # (account, region, cluster, clientToken) -> the service it created


@_serialized
def create_service_response(self):
    # ECS: CreateService is idempotent by clientToken: a request whose token already created a
    # service in that cluster answers with that service and changes nothing, so a client's
    # retry of a create that succeeded starts no second set of tasks (moto ignores the token,
    # replaces the service, and the launch above starts its tasks again). The model lock (an
    # RLock, re-entered by create_service below) makes a retry that arrives while the first
    # attempt is still being served wait for it.
    token = self._get_param("clientToken")
    if not token:
        return _orig_create_service_response(self)
    key = (self.current_account, self.region, self._get_param("cluster", "default"), token)
    if key not in _client_tokens:
        result = _orig_create_service_response(self)
        _client_tokens[key] = result.result["service"]
        return result
    return ActionResult({"service": _client_tokens[key]})


EC2ContainerServiceResponse.create_service = create_service_response

ecs.EC2ContainerServiceBackend.create_service = create_service
ecs.EC2ContainerServiceBackend.update_service = update_service
ecs.EC2ContainerServiceBackend.delete_service = delete_service
ecs.EC2ContainerServiceBackend.list_tasks = list_tasks


def _request_log(path):
    """WSGI middleware appending "service Action unix-time" per request to `path`."""
    from moto.server import DomainDispatcherApplication

    orig = DomainDispatcherApplication.__call__
    out = open(path, "a", buffering=1)
    lock = threading.Lock()

    def call(self, environ, start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        action = target.split(".")[-1] if target else ""
        if not action:
            qs = environ.get("QUERY_STRING", "")
            for kv in qs.split("&"):
                if kv.startswith("Action="):
                    action = kv[7:]
        if not action and environ.get("REQUEST_METHOD") == "POST":
            # EC2 and other query protocols carry Action in the form body.
            try:
                n = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                n = 0
            body = environ["wsgi.input"].read(n)
            import io

            environ["wsgi.input"] = io.BytesIO(body)
            for kv in body.decode("utf-8", "replace").split("&"):
                if kv.startswith("Action="):
                    action = kv[7:]
        svc = "ecs" if target.startswith("AmazonEC2ContainerService") else "other"
        if action and svc == "other" and "ec2" in environ.get("HTTP_AUTHORIZATION", ""):
            svc = "ec2"
        with lock:
            out.write(f"{svc} {action or environ.get('PATH_INFO', '')} {time.time():.3f}\n")
        return orig(self, environ, start_response)

    DomainDispatcherApplication.__call__ = call


def _imds_on_loopback():
    """Serves moto's EC2 instance metadata (IMDSv2 token, /latest/meta-data/...) on this
    server's own address: moto dispatches by host, and nodes under test reach it through
    AWS_EC2_METADATA_SERVICE_ENDPOINT instead of 169.254.169.254."""
    from moto.server import DomainDispatcherApplication

    orig = DomainDispatcherApplication.__call__

    def call(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith("/latest/"):
            environ["HTTP_HOST"] = "169.254.169.254"
        return orig(self, environ, start_response)

    DomainDispatcherApplication.__call__ = call

    # Real IMDS answers the token request with the token's TTL in
    # X-aws-ec2-metadata-token-ttl-seconds (the SDKs require it); moto 5.2 sends none.
    from moto.instance_metadata.responses import InstanceMetadataResponse

    orig_response = InstanceMetadataResponse.metadata_response

    def metadata_response(request, full_url, headers):
        status, out_headers, body = orig_response(request, full_url, headers)
        if full_url.split("?")[0].endswith("/latest/api/token"):
            ttl = "21600"
            for k, v in dict(headers).items():
                if k.lower() == "x-aws-ec2-metadata-token-ttl-seconds":
                    ttl = v
            out_headers = {"x-aws-ec2-metadata-token-ttl-seconds": ttl}
        return status, out_headers, body

    InstanceMetadataResponse.metadata_response = staticmethod(metadata_response)


_imds_on_loopback()


if __name__ == "__main__":
    from moto.server import main

    args = sys.argv[1:]
    if "--log" in args:
        i = args.index("--log")
        _request_log(args[i + 1])
        del args[i : i + 2]
    host = "127.0.0.1"
    if "--host" in args:
        i = args.index("--host")
        host = args[i + 1]
        del args[i : i + 2]
    main(["-H", host, "-p", args[0]])
