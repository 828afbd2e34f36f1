#!/usr/bin/env bash
# Validates deploy/ offline (no cluster, no docker):
#   - every Kubernetes manifest listed in deploy/kubernetes/kustomization.yaml, against the
#     Kubernetes JSON schemas bundled in the PyPI package kubernetes-validate, in --strict mode
#     (unknown fields fail), for the oldest and newest Kubernetes versions we support;
#   - the kustomization itself (lists every manifest; renders, when kubectl is installed);
#   - both broker.toml files parse, and the pod's termination grace outlasts the broker's drain;
#   - deploy/compose.yaml parses as YAML and builds its brokers from deploy/Dockerfile;
#   - deploy/Dockerfile builds and runs the `credential-broker` binary.
#
#   scripts/validate-deploy.sh
#
# Settings: CB_VENV (virtualenv, default .venv at the repo root, shared with scripts/kms-server.sh),
# CB_K8S_VERSIONS (default "1.30.0 1.37.0": 1.30 is the floor for the preStop sleep action).
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${CB_VENV:-.venv}"
K8S_VERSIONS="${CB_K8S_VERSIONS:-1.30.0 1.37.0}"
KV_VERSION=1.37.0   # kubernetes-validate: bundles the schemas up to Kubernetes 1.37
SPECS=("kubernetes-validate==$KV_VERSION" 'PyYAML>=6,<7' 'tomli>=2; python_version < "3.11"')
K8S_DIR=deploy/kubernetes

say() { printf 'validate-deploy: %s\n' "$*"; }
die() {
  printf '\n!!!!! validate-deploy: %s !!!!!\n\n' "$*" >&2
  exit 1
}

install() {
  if [[ ! -x "$VENV/bin/python" ]]; then
    command -v python3 >/dev/null || die "python3 is not installed (apt-get install python3 python3-venv)"
    say "creating virtualenv $VENV"
    python3 -m venv "$VENV" || die "cannot create virtualenv $VENV (is python3-venv installed?)"
  fi
  [[ -x "$VENV/bin/pip" ]] || die "virtualenv $VENV has no pip (apt-get install python3-venv, or remove $VENV)"
  if [[ "$("$VENV/bin/kubernetes-validate" --version 2>/dev/null)" != "$KV_VERSION" ]] ||
    ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
    say "installing ${SPECS[*]} into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${SPECS[@]}" ||
      die "pip could not install ${SPECS[*]}"
  fi
}

install
PY="$VENV/bin/python"
failures=0
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  failures=$((failures + 1))
}

# --- the kustomization lists exactly the manifests in its directory -----------------------------
if ! manifests=$("$PY" - "$K8S_DIR" <<'PY'
import pathlib, sys, yaml
d = pathlib.Path(sys.argv[1])
k = yaml.safe_load((d / "kustomization.yaml").read_text())
listed = k.get("resources", [])
on_disk = sorted(p.name for p in d.glob("*.y*ml") if p.name != "kustomization.yaml")
problems = [f"{r}: listed in kustomization.yaml but missing" for r in listed if not (d / r).is_file()]
problems += [f"{f}: not listed in kustomization.yaml resources" for f in on_disk if f not in listed]
for p in problems:
    print(p, file=sys.stderr)
print("\n".join(str(d / r) for r in listed))
sys.exit(1 if problems else 0)
PY
); then
  fail "$K8S_DIR/kustomization.yaml does not match the manifests beside it"
  mapfile -t manifests <<<"$manifests"
else
  mapfile -t manifests <<<"$manifests"
  say "ok: kustomization.yaml lists the ${#manifests[@]} manifests beside it"
fi

# --- schemas: strict, each supported version; a kind without a schema (typo) fails too ----------
for v in $K8S_VERSIONS; do
  if out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${manifests[@]}" 2>&1) &&
    ! grep -q . <<<"$out"; then
    say "ok: ${#manifests[@]} manifests valid against Kubernetes $v schemas (strict)"
  else
    printf '%s\n' "$out" >&2
    fail "Kubernetes $v schema validation"
  fi
done

# kubectl is optional here: when present, the kustomization must render and its output validate.
if command -v kubectl >/dev/null; then
  rendered=$(mktemp)
  trap 'rm -f "$rendered"' EXIT
  if kubectl kustomize "$K8S_DIR" >"$rendered" 2>&1 &&
    out=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "${K8S_VERSIONS##* }" "$rendered" 2>&1) &&
    ! grep -q . <<<"$out"; then
    say "ok: kubectl kustomize $K8S_DIR renders $(grep -c '^kind:' "$rendered") valid resources"
  else
    cat "$rendered" >&2
    printf '%s\n' "${out:-}" >&2
    fail "kubectl kustomize $K8S_DIR"
  fi
else
  say "skipped: rendering the kustomization (kubectl not installed)"
fi

# --- broker config files, compose file, Dockerfile ----------------------------------------------
"$PY" - <<'PY' || fail "deploy config, compose or Dockerfile checks (see above)"
import pathlib, re, sys, yaml
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

problems = []
def ok(msg): print(f"validate-deploy: ok: {msg}")
def bad(msg): problems.append(msg); print(f"FAIL: {msg}", file=sys.stderr)

# The ConfigMap's broker.toml and the Deployment's shutdown budget.
docs = {d["kind"]: d for d in yaml.safe_load_all(open("deploy/kubernetes/configmap.yaml"))}
docs.update({d["kind"]: d for d in yaml.safe_load_all(open("deploy/kubernetes/deployment.yaml"))})
try:
    cfg = tomllib.loads(docs["ConfigMap"]["data"]["broker.toml"])
    ok("ConfigMap broker.toml parses as TOML")
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    grace = pod["terminationGracePeriodSeconds"]
    drain = cfg.get("shutdown_grace_seconds", 20)
    sleep = sum(c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                for c in pod["containers"])
    if grace > drain + sleep:
        ok(f"terminationGracePeriodSeconds {grace} > preStop sleep {sleep} + shutdown_grace_seconds {drain}")
    else:
        bad(f"terminationGracePeriodSeconds {grace} must exceed preStop sleep {sleep} + shutdown_grace_seconds {drain}")
except (tomllib.TOMLDecodeError, KeyError) as e:
    bad(f"ConfigMap broker.toml: {e}")

# compose.yaml: YAML, the expected services, brokers built from deploy/Dockerfile, config exists.
compose_path = pathlib.Path("deploy/compose.yaml")
try:
    compose = yaml.safe_load(compose_path.read_text())
    ok(f"{compose_path} parses as YAML")
    services = compose["services"]
    for name in ("postgres", "kms", "kms-init", "migrate", "broker-1", "broker-2"):
        if name not in services:
            bad(f"{compose_path}: service {name} missing")
    mounted = set()
    for name in ("migrate", "broker-1", "broker-2"):
        build = services.get(name, {}).get("build", {})
        context = compose_path.parent / build.get("context", ".")
        if (context / build.get("dockerfile", "Dockerfile")).resolve() == pathlib.Path("deploy/Dockerfile").resolve():
            ok(f"{compose_path}: {name} is built from deploy/Dockerfile")
        else:
            bad(f"{compose_path}: {name} is not built from deploy/Dockerfile")
        mounted |= {compose_path.parent / v.split(":")[0] for v in services.get(name, {}).get("volumes", [])}
    for src in sorted(mounted):
        if not src.exists():
            bad(f"{compose_path}: mounts missing {src}")
        elif src.suffix == ".toml":
            try:
                tomllib.loads(src.read_text())
                ok(f"{src} parses as TOML")
            except tomllib.TOMLDecodeError as e:
                bad(f"{src}: {e}")
except (yaml.YAMLError, KeyError, TypeError, AttributeError) as e:
    bad(f"{compose_path}: {e}")

# Dockerfile: builds and runs the credential-broker binary; context root excludes target/ etc.
dockerfile = pathlib.Path("deploy/Dockerfile").read_text()
for what, pattern in (
    ("builds it", r"cargo build --release --locked -p credential-broker\b"),
    ("copies it", r"COPY --from=\S+ \S*/credential-broker /usr/local/bin/credential-broker\b"),
    ("runs it", r'ENTRYPOINT \["/usr/local/bin/credential-broker"\]'),
    ("as non-root", r"^USER 65532"),
):
    if re.search(pattern, dockerfile, re.M):
        ok(f"deploy/Dockerfile {what} (credential-broker)")
    else:
        bad(f"deploy/Dockerfile: no match for {pattern!r} ({what})")
ignore = pathlib.Path(".dockerignore")
entries = set(ignore.read_text().split()) if ignore.exists() else set()
missing = {"target", ".git", "node_modules", ".venv", "data"} - entries
if missing:
    bad(f".dockerignore (build context root) lacks {sorted(missing)}")
else:
    ok(".dockerignore excludes target, .git, node_modules, .venv, data")
sys.exit(1 if problems else 0)
PY

if ((failures)); then
  die "$failures check(s) failed"
fi
say "all deploy checks passed (kubernetes-validate $KV_VERSION, Kubernetes ${K8S_VERSIONS// /, })"
