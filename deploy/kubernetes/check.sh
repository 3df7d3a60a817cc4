#!/usr/bin/env bash
# Validates the Kubernetes manifests in this folder offline:
#   1. yamllint (strict: warnings fail);
#   2. kubernetes-validate --strict against the bundled OpenAPI schemas of each version in
#      K8S_VERSIONS (unknown fields, wrong types and unknown kinds/apiVersions fail);
#   3. Weir's own rules the schemas cannot see: node.toml has only keys `weir server --config`
#      accepts, the peers list matches the pods' advertised addresses, and the StatefulSet,
#      Services and PodDisruptionBudget agree with each other;
#   4. the kustomization lists every manifest (and, where kubectl is installed, renders).
# The tools are installed once into target/k8s-validate-venv (from PyPI, pinned); after that
# the check needs no network. Usage: deploy/kubernetes/check.sh [MANIFEST...]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/target/k8s-validate-venv"
# gRPC probes are GA from 1.27 and PodDisruptionBudget policy/v1 from 1.21: the oldest version
# these manifests support, and the newest the pinned validator bundles.
K8S_VERSIONS="${K8S_VERSIONS:-1.27.0 1.37.0}"
pins=(kubernetes-validate==1.37.0 yamllint==1.38.0 jsonschema==4.26.0 PyYAML==6.0.3)

if [ "$#" -gt 0 ]; then
    manifests=("$@")
else
    manifests=()
    for f in "$here"/*.yaml; do
        [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
    done
fi

# Install (or re-install after a pin change) the validator.
stamp="$venv/.weir-pins"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]; then
    echo "== installing ${pins[*]} into ${venv#"$root"/}"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"
    if ! "$venv/bin/python" -c 'import tomllib' 2>/dev/null; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check tomli==2.2.1
    fi
    echo "${pins[*]}" > "$stamp"
fi

failed=0
fail() { echo "FAIL: $*"; failed=1; }

echo "== yamllint $("$venv/bin/yamllint" --version | awk '{print $2}')"
yamllint_files=("${manifests[@]}")
[ "$#" -gt 0 ] || yamllint_files+=("$here/kustomization.yaml" "$here"/../kubernetes-tls/*.yaml)
if "$venv/bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 100}}}' \
    "${yamllint_files[@]}"; then
    echo "ok: ${yamllint_files[*]#"$root"/}"
else
    fail "yamllint"
fi

for version in $K8S_VERSIONS; do
    echo "== kubernetes-validate --strict, Kubernetes $version"
    # It reports the first error of each resource, and exits 0 on a kind or apiVersion it has
    # no schema for (a WARN line only): anything but an INFO line is a failure here.
    rc=0
    out="$("$venv/bin/kubernetes-validate" --strict -k "$version" "${manifests[@]}" 2>&1)" || rc=$?
    echo "${out//"$root/"/}"
    if [ "$rc" -ne 0 ] || [ -z "$out" ] || grep -qv '^INFO ' <<<"$out"; then
        fail "kubernetes-validate against Kubernetes $version (exit $rc)"
    fi
done

echo "== Weir rules"
"$venv/bin/python" - "$here" "${manifests[@]}" <<'PY' || fail "Weir rules"
import os, re, sys
import yaml
try:
    import tomllib
except ImportError:
    import tomli as tomllib

here, files = sys.argv[1], sys.argv[2:]
docs = []
for f in files:
    with open(f) as fh:
        try:
            docs += [d for d in yaml.safe_load_all(fh) if d]
        except yaml.YAMLError as e:
            sys.exit(f"  {f} is not YAML: {str(e).splitlines()[0]}")
by = {(d.get("kind"), d.get("metadata", {}).get("name")): d for d in docs}
errors = []

def need(cond, msg):
    if not cond:
        errors.append(msg)

def get(kind, name):
    d = by.get((kind, name))
    need(d is not None, f"{kind} {name} is missing")
    return d or {}

cm = get("ConfigMap", "weir-config").get("data", {})
svc = get("Service", "weir-headless").get("spec", {})
client = get("Service", "weir").get("spec", {})
sts = get("StatefulSet", "weir").get("spec", {})
pdb = get("PodDisruptionBudget", "weir").get("spec", {})

# node.toml: exactly the keys NodeConfig accepts (crates/broker/src/config.rs; unknown keys are
# errors), with the right types; per-node keys belong in the environment.
try:
    conf = tomllib.loads(cm.get("node.toml", ""))
except Exception as e:
    conf = {}
    errors.append(f"node.toml does not parse: {e}")
types = {"id": int, "id_from_hostname": bool, "addr": str, "advertised_addr": str,
         "external_addr": str, "external_advertised_addr": str, "data_dir": str, "peers": list,
         "join": str, "rack": str, "durability": str, "raft": dict, "retention_check_ms": int,
         "metrics_addr": str}
for key, value in conf.items():
    if key not in types:
        errors.append(f"node.toml: unknown key {key!r} (weir server rejects it)")
    elif not isinstance(value, types[key]) or (types[key] is not bool and isinstance(value, bool)):
        errors.append(f"node.toml: {key} has the wrong type ({type(value).__name__})")
for key in ("id", "addr", "advertised_addr", "external_advertised_addr", "peers", "join",
            "metrics_addr"):
    need(key not in conf, f"node.toml: {key} is per node; set it in the StatefulSet's env")
d = conf.get("durability", "always")
need(d in ("always", "never") or (isinstance(d, str) and re.fullmatch(r"interval:[1-9][0-9]*", d)),
     f"node.toml: durability {d!r}: use always, never or interval:MS")
raft = conf.get("raft", {})
need(set(raft) <= {"heartbeat_ms", "election_min_ms", "election_max_ms"},
     f"node.toml: unknown [raft] keys {sorted(set(raft) - {'heartbeat_ms', 'election_min_ms', 'election_max_ms'})}")
h, lo, hi = (raft.get(k, v) for k, v in
             (("heartbeat_ms", 150), ("election_min_ms", 800), ("election_max_ms", 1600)))
need(all(isinstance(x, int) for x in (h, lo, hi)) and 0 < h < lo < hi,
     "node.toml: need 0 < heartbeat_ms < election_min_ms < election_max_ms")
need(conf.get("retention_check_ms", 1) > 0, "node.toml: retention_check_ms must be positive")

# The StatefulSet and its Services.
need(sts.get("podManagementPolicy") == "Parallel",
     "StatefulSet: podManagementPolicy must be Parallel (OrderedReady waits forever for quorum)")
need(sts.get("serviceName") == "weir-headless", "StatefulSet: serviceName must be weir-headless")
need(svc.get("clusterIP") == "None", "weir-headless: clusterIP must be None")
need(svc.get("publishNotReadyAddresses") is True,
     "weir-headless: publishNotReadyAddresses must be true (nodes meet before any is Ready)")
tmpl = sts.get("template", {})
labels = tmpl.get("metadata", {}).get("labels", {})
selector = sts.get("selector", {}).get("matchLabels", {})
need(selector and selector.items() <= labels.items(), "StatefulSet: selector does not match its pods")
for name, sel in (("weir-headless", svc.get("selector", {})), ("weir", client.get("selector", {})),
                  ("PodDisruptionBudget", pdb.get("selector", {}).get("matchLabels", {}))):
    need(sel and sel.items() <= labels.items(), f"{name}: selector does not match the pods")
need(pdb.get("maxUnavailable") == 1, "PodDisruptionBudget: maxUnavailable should be 1")
for claim in sts.get("volumeClaimTemplates", []):
    for mode in claim.get("spec", {}).get("accessModes", []):
        need(mode in ("ReadWriteOnce", "ReadWriteOncePod", "ReadOnlyMany", "ReadWriteMany"),
             f"volumeClaimTemplates: unknown access mode {mode!r}")

containers = tmpl.get("spec", {}).get("containers", [])
c = next((c for c in containers if c.get("name") == "weir"), {})
need(c, "StatefulSet: no container named weir")
ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
grpc = ports.get("grpc")
need(grpc is not None, "container: no port named grpc")
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    p = c.get(probe, {})
    need(p.get("grpc", {}).get("port") == grpc, f"container: {probe} must be a gRPC probe on {grpc}")
need(c.get("args", [])[:1] == ["server"], "container: args must start with the server subcommand")
env, seen = {}, []
for e in c.get("env", []):
    for ref in re.findall(r"\$\((\w+)\)", str(e.get("value", ""))):
        need(ref in seen, f"env {e['name']} uses $({ref}) before it is defined")
    seen.append(e["name"])
    env[e["name"]] = e
need(env.get("WEIR_ID_FROM_HOSTNAME", {}).get("value") == "true",
     "env: WEIR_ID_FROM_HOSTNAME must be true (weir-0 is node 1, ...)")
advertised = env.get("WEIR_ADVERTISED_ADDR", {}).get("value", "")
want = f"$(POD_NAME).{sts.get('serviceName')}:{grpc}"
need(advertised == want, f"env: WEIR_ADVERTISED_ADDR is {advertised!r}, want {want!r}")
ref = env.get("WEIR_PEERS", {}).get("valueFrom", {}).get("configMapKeyRef", {})
need(ref.get("name") == "weir-config" and ref.get("key") in cm,
     "env: WEIR_PEERS must come from a key of ConfigMap weir-config")
need(any(p.get("port") == grpc for p in svc.get("ports", [])), "weir-headless: no port " + str(grpc))

# Every initial voter is a pod of this StatefulSet at the address that pod advertises.
peers = [p.strip() for p in cm.get(ref.get("key", "peers"), "").split(",") if p.strip()]
need(len(peers) in (1, 3, 5), f"peers: {len(peers)} controller voters; use 1, 3 or 5")
need(len(peers) <= sts.get("replicas", 1), "peers: more voters than replicas")
sts_name = by.get(("StatefulSet", "weir"), {}).get("metadata", {}).get("name", "weir")
ids = set()
for p in peers:
    m = re.fullmatch(r"(\d+)@(.+)", p)
    if not m:
        errors.append(f"peers: {p!r} is not ID@HOST:PORT")
        continue
    i = int(m.group(1))
    ids.add(i)
    addr = f"{sts_name}-{i - 1}.{sts.get('serviceName')}:{grpc}"
    need(i >= 1 and m.group(2) == addr, f"peers: {p!r}: node {i} is pod {sts_name}-{i - 1}, "
         f"which advertises {addr}")
need(len(ids) == len(peers), "peers: a node id is listed twice")

for e in errors:
    print("  " + e)
checked = ", ".join(f"{k.lower()}/{n}" for k, n in by)
if errors:
    sys.exit(1)
print(f"ok: node.toml keys and types, {len(peers)} peers, probes, env, selectors ({checked})")
PY

echo "== kustomization"
if [ "$#" -eq 0 ]; then
    "$venv/bin/python" - "$here" <<'PY' || fail "kustomization"
import os, sys, yaml
here = sys.argv[1]
k = yaml.safe_load(open(os.path.join(here, "kustomization.yaml")))
listed = set(k.get("resources", []))
present = {f for f in os.listdir(here) if f.endswith(".yaml") and f != "kustomization.yaml"}
if listed != present:
    print(f"  resources {sorted(listed)} but the folder has {sorted(present)}")
    sys.exit(1)
print(f"ok: resources {sorted(listed)}")
PY
    if command -v kubectl >/dev/null 2>&1; then
        if rendered="$(kubectl kustomize "$here" 2>&1)"; then
            echo "ok: kubectl kustomize renders $(grep -c '^kind: ' <<<"$rendered") resources"
        else
            echo "$rendered"
            fail "kubectl kustomize"
        fi
    else
        echo "skipped kubectl kustomize (no kubectl)"
    fi
    # The TLS variant (../kubernetes-tls): an overlay; rendered, it must pass the same schemas,
    # and every $(VAR) in an env value must name a variable defined before it.
    echo "== kubernetes-tls overlay"
    if command -v kubectl >/dev/null 2>&1; then
        tls_rendered="$root/target/k8s-tls-rendered.yaml"
        if kubectl kustomize "$here/../kubernetes-tls" >"$tls_rendered" 2>&1; then
            for version in $K8S_VERSIONS; do
                "$venv/bin/kubernetes-validate" --strict -k "$version" "$tls_rendered" >/dev/null 2>&1 \
                    || fail "kubernetes-tls against Kubernetes $version"
            done
            "$venv/bin/python" - "$tls_rendered" <<'PY' || fail "kubernetes-tls env order"
import re, sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc or doc.get("kind") != "StatefulSet":
        continue
    for c in doc["spec"]["template"]["spec"]["containers"]:
        seen = set()
        for e in c.get("env", []):
            for var in re.findall(r"\$\((\w+)\)", str(e.get("value", ""))):
                if var not in seen:
                    print(f"  {e['name']} uses $({var}) before it is defined")
                    sys.exit(1)
            seen.add(e["name"])
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/etc/weir-tls" in mounts, "no /etc/weir-tls mount"
print("ok: kubernetes-tls renders, validates, and its env refers back only")
PY
        else
            cat "$tls_rendered"
            fail "kubectl kustomize kubernetes-tls"
        fi
    else
        echo "skipped (no kubectl); yamllint checked its files"
    fi
else
    echo "skipped (manifests given on the command line)"
fi

if [ "$failed" -ne 0 ]; then
    echo "== FAILED"
    exit 1
fi
echo "== all manifests valid"
