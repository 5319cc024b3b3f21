"""Checks rendered Kubernetes manifests of Model Gateway (tests/deploy/run.sh runs it).

    check_manifests.py --repo DIR OVERLAY_NAME=RENDERED.yaml ...

For every object of every rendered overlay:

* Schema: Kubernetes' own OpenAPI schemas in strict mode (kubernetes-validate: an unknown or
  misspelt field, a wrong type, a missing required field fail), for the oldest and the newest
  Kubernetes minor the manifests support. Custom resources are validated against a schema of
  their CRD (ServiceMonitor: the prometheus-operator models of cloudcoil, made strict: unknown
  fields fail as they do with the API server's strict field validation); any other kind that
  neither knows fails.
* Policy, on every pod template: non-root (pod and container), read-only root filesystem,
  no privilege escalation, all capabilities dropped, seccomp RuntimeDefault, liveness and
  readiness probes on a declared port (the data plane's on /healthz and /readyz), CPU and
  memory requests and limits, a pinned image tag, every volume mount backed by a volume,
  writable mounts for /tmp and the working directory, no secret as a literal variable, no
  variable both `value` and `valueFrom`, `$(VAR)` only after VAR, every MODELGW_* variable one
  the binary reads (cli/src), ConfigMaps that exist in the overlay; no `replicas` on a
  Deployment an autoscaler scales.
* References: every Secret (and key) a manifest uses exists in the overlay or is documented as
  operator-provided in deploy/README.md's "Secrets" table — and every documented one is used
  by some overlay; Service selectors and target ports, HPA and PDB targets resolve.
* Network: the distribution port (4002) admits only data-plane pods.

Exit status 1 and one line per violation when anything fails.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
from typing import Any, Iterator

import functools
import json

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml

# kubernetes-validate reads and parses its (large) definitions file for every object; once per
# file is enough.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents)

# The Kubernetes minors the manifests must validate against: the oldest supported (the
# `sleep` preStop action is on by default from 1.30; AKS's oldest supported minor is newer)
# and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.32.0", "1.37.0")

GRPC_PORT = 4002
DATA_PLANE_LABEL = ("app.kubernetes.io/name", "modelgw-data-plane")
SECRET_NAMES = re.compile(r"(TOKEN|SECRET|PASSWORD|MASTER_KEY|SNAPSHOT_KEY|DATABASE_URL|API_KEY)")
ENV_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
MODELGW_VAR = re.compile(r"MODELGW_[A-Z0-9_]*[A-Z0-9]")
# Where a container writes under a read-only root: /tmp and the image's working directory.
WRITABLE_PATHS = ("/tmp", "/var/lib/modelgw")


class Problems:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{where}: {message}")


# --- custom resources ---------------------------------------------------------------------


def _strict(node: Any) -> None:
    """Unknown fields fail: every object schema that lists its properties closes them."""
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)


def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """ServiceMonitor's schema from the prometheus-operator models, made strict; computed once
    per virtualenv (importing the models takes seconds) and kept beside it."""
    cache = pathlib.Path(sys.prefix) / "modelgw-crd-schemas.json"
    if cache.exists():
        schemas = json.loads(cache.read_text())
    else:
        from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

        schema = ServiceMonitor.model_json_schema(by_alias=True, mode="validation")
        _strict(schema)
        schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
        schemas = {"monitoring.coreos.com/v1 ServiceMonitor": schema}
        cache.write_text(json.dumps(schemas))
    validators = {}
    for key, schema in schemas.items():
        api_version, kind = key.split(" ")
        validators[(api_version, kind)] = jsonschema.validators.validator_for(schema)(schema)
    return validators


def validate_schema(name: str, obj: dict, crds: dict, problems: Problems) -> None:
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    where = f"{name}: {key[1]}/{obj.get('metadata', {}).get('name', '?')}"
    if key in crds:
        for error in sorted(crds[key].iter_errors(obj), key=lambda e: list(e.absolute_path)):
            path = ".".join(str(p) for p in error.absolute_path)
            problems.add(where, f"{key[1]} schema: {path}: {error.message[:300]}")
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.add(where, f"no schema for {key[0]} {key[1]} in Kubernetes {version} (and no CRD schema here)")
            return
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            problems.add(where, f"Kubernetes {version} schema: {path}: {error.message[:300]}")
            return


# --- secrets documented for the operator -----------------------------------------------------


def documented_secrets(readme: pathlib.Path) -> dict[str, set[str]]:
    """The "Secrets" table of deploy/README.md: | `name` | `key`, `key` | … |"""
    text = readme.read_text()
    match = re.search(r"^## Secrets\b.*?(?=^## |\Z)", text, re.M | re.S)
    if not match:
        raise SystemExit(f"{readme}: no '## Secrets' section")
    secrets: dict[str, set[str]] = {}
    for line in match.group(0).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        secrets[cells[0].strip("`")] = set(re.findall(r"`([^`]+)`", cells[1]))
    return secrets


# --- walking the objects --------------------------------------------------------------------


def pod_templates(obj: dict) -> Iterator[dict]:
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield spec.get("template") or {}
    elif kind == "CronJob":
        yield ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    elif kind == "Pod":
        yield obj


def secret_refs(obj: dict) -> Iterator[tuple[str, str | None, bool]]:
    """(secret, key or None for the whole Secret, optional) for everything obj reads."""
    for template in pod_templates(obj):
        spec = template.get("spec") or {}
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    yield ref["name"], ref["key"], bool(ref.get("optional"))
            for env_from in c.get("envFrom") or []:
                ref = env_from.get("secretRef")
                if ref:
                    yield ref["name"], None, bool(ref.get("optional"))
        for volume in spec.get("volumes") or []:
            sources = [volume] + [s for s in (volume.get("projected") or {}).get("sources", [])]
            for source in sources:
                secret = source.get("secret")
                if not secret:
                    continue
                name = secret.get("secretName") or secret.get("name")
                items = secret.get("items")
                if items:
                    for item in items:
                        yield name, item["key"], bool(secret.get("optional"))
                else:
                    yield name, None, bool(secret.get("optional"))
        for pull in spec.get("imagePullSecrets") or []:
            yield pull["name"], None, False
    if obj.get("kind") == "Ingress":
        for tls in (obj.get("spec") or {}).get("tls") or []:
            if tls.get("secretName"):
                yield tls["secretName"], "tls.crt", False
                yield tls["secretName"], "tls.key", False


def labels_match(selector: dict, labels: dict) -> bool:
    match_labels = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
    if "matchExpressions" in selector:
        return False  # not used by these manifests; treat as unresolved
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def check_pod(where: str, template: dict, configmaps: set[str], known_vars: set[str], problems: Problems) -> None:
    spec = template.get("spec") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    pod_sc = spec.get("securityContext") or {}
    if pod_sc.get("runAsNonRoot") is not True:
        problems.add(where, "pod securityContext.runAsNonRoot is not true")
    if pod_sc.get("runAsUser") == 0:
        problems.add(where, "pod runs as uid 0")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        problems.add(where, "pod shares a host namespace")
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for c in spec.get("containers") or []:
        cw = f"{where} container {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("runAsNonRoot") is False or sc.get("runAsUser") == 0:
            problems.add(cw, "container overrides non-root")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.add(cw, "securityContext.readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.add(cw, "securityContext.allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.add(cw, "privileged")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.add(cw, "securityContext.capabilities.drop does not include ALL")
        if (sc.get("capabilities") or {}).get("add"):
            problems.add(cw, "adds capabilities")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp != "RuntimeDefault":
            problems.add(cw, f"seccompProfile is {seccomp!r}, not RuntimeDefault")
        image = c.get("image", "")
        if ":" not in image.rsplit("/", 1)[-1] and "@" not in image or image.endswith(":latest"):
            problems.add(cw, f"image {image!r} is not pinned to a tag or digest")
        resources = c.get("resources") or {}
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if not (resources.get(part) or {}).get(resource):
                    problems.add(cw, f"resources.{part}.{resource} is not set")
        port_names = {p.get("name") for p in c.get("ports") or []} | {p.get("containerPort") for p in c.get("ports") or []}
        for probe_name in ("livenessProbe", "readinessProbe"):
            probe = c.get(probe_name)
            if not probe:
                problems.add(cw, f"no {probe_name}")
                continue
            action = probe.get("httpGet") or probe.get("tcpSocket") or probe.get("grpc") or {}
            if action.get("port") not in port_names:
                problems.add(cw, f"{probe_name} port {action.get('port')!r} is not a declared container port")
        if labels.get(DATA_PLANE_LABEL[0]) == DATA_PLANE_LABEL[1]:
            for probe_name, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                got = ((c.get(probe_name) or {}).get("httpGet") or {}).get("path")
                if got != path:
                    problems.add(cw, f"data plane {probe_name} is {got!r}, not GET {path}")
        mounts = c.get("volumeMounts") or []
        for mount in mounts:
            if mount.get("name") not in volumes:
                problems.add(cw, f"volume mount {mount.get('mountPath')} names no volume ({mount.get('name')!r})")
        writable = {m.get("mountPath") for m in mounts if not m.get("readOnly")}
        # Everything writes /tmp; a control plane also its working directory (SQLite).
        needed = WRITABLE_PATHS if (c.get("args") or [None])[0] == "control-plane" else WRITABLE_PATHS[:1]
        for path in needed:
            if path not in writable:
                problems.add(cw, f"nothing writable is mounted at {path} (the root filesystem is read-only)")
        defined: set[str] = set()
        for env in c.get("env") or []:
            name = env.get("name", "")
            if "value" in env and "valueFrom" in env:
                problems.add(cw, f"variable {name} has both value and valueFrom")
            value = env.get("value")
            if isinstance(value, str):
                for ref in ENV_REF.findall(value):
                    if ref not in defined:
                        problems.add(cw, f"variable {name} refers to $({ref}), not defined before it (left unexpanded)")
                # A database URL is a secret when it carries a password (SQLite's does not).
                credential = bool(re.search(r"://[^/@]*:[^/@]*@", value)) if name.endswith("DATABASE_URL") else bool(value)
                if SECRET_NAMES.search(name) and not name.endswith("_FILE") and credential:
                    problems.add(cw, f"variable {name} holds a literal value: a secret belongs in a Secret")
            defined.add(name)
            for var in MODELGW_VAR.findall(name):
                if var not in known_vars:
                    problems.add(cw, f"variable {var} is not one modelgw reads (cli/src)")
        for env_from in c.get("envFrom") or []:
            ref = env_from.get("configMapRef")
            if ref and ref["name"] not in configmaps and not ref.get("optional"):
                problems.add(cw, f"envFrom ConfigMap {ref['name']!r} is not in the overlay")
    for volume in volumes.values():
        cm = volume.get("configMap")
        if cm and cm["name"] not in configmaps and not cm.get("optional"):
            problems.add(where, f"volume {volume['name']}: ConfigMap {cm['name']!r} is not in the overlay")


def check_overlay(name: str, objects: list[dict], crds: dict, documented: dict[str, set[str]],
                  known_vars: set[str], used_secrets: set[str], problems: Problems) -> None:
    by_kind: dict[str, list[dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj.get("kind", "?"), []).append(obj)
        validate_schema(name, obj, crds, problems)
    if not by_kind.get("Deployment"):
        problems.add(name, "renders no Deployment")
    configmaps = {o["metadata"]["name"] for o in by_kind.get("ConfigMap", [])}
    secrets = {o["metadata"]["name"]: set((o.get("data") or {}) | (o.get("stringData") or {}))
               for o in by_kind.get("Secret", [])}
    for cm in by_kind.get("ConfigMap", []):
        for var in MODELGW_VAR.findall(" ".join((cm.get("data") or {}).keys())):
            if var not in known_vars:
                problems.add(f"{name}: ConfigMap/{cm['metadata']['name']}", f"{var} is not a variable modelgw reads (cli/src)")
    pods: list[tuple[str, dict]] = []
    for obj in objects:
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        for template in pod_templates(obj):
            pods.append((obj["metadata"]["name"], template))
            check_pod(where, template, configmaps, known_vars, problems)
        for secret, key, optional in secret_refs(obj):
            used_secrets.add(secret)
            if secret in secrets:
                if key is not None and key not in secrets[secret] and not optional:
                    problems.add(where, f"Secret {secret} in the overlay has no key {key!r}")
            elif secret not in documented:
                problems.add(where, f"Secret {secret!r} is neither in the overlay nor documented in deploy/README.md (## Secrets)")
            elif key is not None and key not in documented[secret]:
                problems.add(where, f"key {key!r} of Secret {secret} is not documented in deploy/README.md (## Secrets)")
    # Services, autoscalers and disruption budgets point at something.
    for svc in by_kind.get("Service", []):
        where = f"{name}: Service/{svc['metadata']['name']}"
        selector = (svc.get("spec") or {}).get("selector") or {}
        targets = [t for _, t in pods if labels_match(selector, (t.get("metadata") or {}).get("labels") or {})]
        if not targets:
            problems.add(where, "selects no pod template")
        for port in (svc.get("spec") or {}).get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            for t in targets:
                declared = set()
                for c in (t.get("spec") or {}).get("containers") or []:
                    for p in c.get("ports") or []:
                        declared |= {p.get("name"), p.get("containerPort")}
                if target not in declared:
                    problems.add(where, f"targetPort {target!r} is not a port of the selected pods")
    deployments = {o["metadata"]["name"]: o for o in by_kind.get("Deployment", [])}
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") not in deployments:
            problems.add(f"{name}: HorizontalPodAutoscaler/{hpa['metadata']['name']}", f"targets {ref}, not a Deployment here")
        elif "replicas" in deployments[ref["name"]]["spec"]:
            problems.add(f"{name}: Deployment/{ref['name']}", "sets spec.replicas although an autoscaler owns it (every apply would reset the count)")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not any(labels_match(pdb["spec"].get("selector") or {}, (t.get("metadata") or {}).get("labels") or {}) for _, t in pods):
            problems.add(f"{name}: PodDisruptionBudget/{pdb['metadata']['name']}", "selects no pod template")
    # The distribution port: only data-plane pods.
    control_planes = [t for n, t in pods if any(
        p.get("containerPort") == GRPC_PORT for c in (t.get("spec") or {}).get("containers") or [] for p in c.get("ports") or [])]
    for template in control_planes:
        labels = (template.get("metadata") or {}).get("labels") or {}
        policies = [p for p in by_kind.get("NetworkPolicy", [])
                    if labels_match(p["spec"].get("podSelector") or {}, labels) and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
        if not policies:
            problems.add(name, f"no NetworkPolicy guards the distribution port {GRPC_PORT} of the control plane")
        for policy in policies:
            for rule in policy["spec"].get("ingress") or []:
                ports = rule.get("ports")
                if ports is not None and not any(p.get("port") in (GRPC_PORT, "grpc") for p in ports):
                    continue
                peers = rule.get("from")
                ok = bool(peers) and all(
                    set(peer) == {"podSelector"} and labels_match(peer["podSelector"], {DATA_PLANE_LABEL[0]: DATA_PLANE_LABEL[1]})
                    for peer in peers)
                if not ok:
                    problems.add(f"{name}: NetworkPolicy/{policy['metadata']['name']}",
                                 f"an ingress rule admits more than data-plane pods to port {GRPC_PORT}: {rule}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", required=True, type=pathlib.Path)
    parser.add_argument("rendered", nargs="+", help="OVERLAY=FILE")
    args = parser.parse_args()
    known_vars = set()
    for source in (args.repo / "cli" / "src").glob("*.rs"):
        known_vars |= set(MODELGW_VAR.findall(source.read_text()))
    documented = documented_secrets(args.repo / "deploy" / "README.md")
    crds = crd_validators()
    problems = Problems()
    used: set[str] = set()
    counts = []
    for item in args.rendered:
        name, _, path = item.partition("=")
        objects = [o for o in yaml.safe_load_all(pathlib.Path(path).read_text()) if o]
        check_overlay(name, objects, crds, documented, known_vars, used, problems)
        counts.append(f"{name} {len(objects)}")
    for secret in sorted(set(documented) - used):
        problems.add("deploy/README.md", f"documents Secret {secret!r}, which no overlay uses")
    if problems.lines:
        for line in problems.lines:
            print(f"FAIL {line}", file=sys.stderr)
        return 1
    print(f"manifests OK ({', '.join(counts)} objects; Kubernetes {' and '.join(v.rsplit('.', 1)[0] for v in KUBERNETES_VERSIONS)} schemas, strict)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
