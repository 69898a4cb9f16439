#!/usr/bin/env bash
# A real DiracX server on loopback for esap-dask's grid tests: no Docker, no network
# beyond PyPI.
#
#   bash scripts/diracx.sh start    # install (once), start moto S3 + DiracX + the local site
#   bash scripts/diracx.sh status   # what runs, where, and the environment to use it
#   bash scripts/diracx.sh stop     # stop everything this script started
#   bash scripts/diracx.sh env      # print the export lines (eval "$(bash scripts/diracx.sh env)")
#
# What it runs, all under $DIRACX_STATE (default: <repo>/.diracx, git-ignored):
#   venv/          the DiracX server packages, pinned (DIRACX_VERSION and the constraints
#                  at the end of this file), in their own virtual environment
#   cs-repo/       a git-backed DIRAC configuration (CS): VO "esap", users esap-user
#                  (NormalUser) and esap-pilot (GenericPilot, JobAdministrator)
#   db/            one SQLite file per DiracX SQL DB; the OpenSearch JobParametersDB
#                  uses diracx-testing's SQLite mock (diracx.testing.routers:create_app)
#   moto           a moto S3 server on 127.0.0.1:$DIRACX_S3_PORT for the sandbox store
#   uvicorn        DiracX on 127.0.0.1:$DIRACX_PORT
#   site           the local site (esap_dask.testing.dirac_site), playing a grid site's pilot
#   credentials.json        the user's tokens, in the file format the DiracX CLI writes
#   pilot-credentials.json  the site's tokens
#
# Tokens come from the server itself through its legacy-exchange endpoint (the way
# legacy DIRAC obtains DiracX tokens, enabled here by a random API key kept in the
# state directory): signed by the server's keys, with a refresh token, for a user of
# the CS. An interactive user would run `dirac login` (device flow) instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${DIRACX_STATE:-$ROOT/.diracx}"
PORT="${DIRACX_PORT:-8720}"
S3_PORT="${DIRACX_S3_PORT:-8721}"
DIRACX_VERSION="0.7.0"
PYTHON="${DIRACX_PYTHON:-python3.11}"
PROJECT_PYTHON="${ESAP_PYTHON:-$ROOT/.venv/bin/python}"
VENV="$STATE/venv"
URL="http://127.0.0.1:$PORT"
S3_URL="http://127.0.0.1:$S3_PORT"

log() { echo "diracx.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

alive() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

# Install the packages "$@" into $VENV with the project's uv (scripts/setup.sh installs it):
# the same pinned versions as pip, in 17.5 s instead of pip's 102 s (2026-11-28, warm
# download caches). False, saying why, where there is no uv or it cannot install: then pip.
uv_install() {
    if ! "$PROJECT_PYTHON" -m uv --version >/dev/null 2>&1; then
        log "no uv in $PROJECT_PYTHON (bash scripts/setup.sh installs it): installing with pip"
        return 1
    fi
    "$PROJECT_PYTHON" -m uv pip install --quiet --python "$VENV/bin/python" \
        --compile-bytecode -c "$STATE/constraints.txt" "$@" && return 0
    log "uv could not install DiracX $DIRACX_VERSION (above): installing with pip"
    return 1
}

install_venv() {
    local stamp="$VENV/.esap-diracx-$DIRACX_VERSION"
    [[ -f "$stamp" ]] && return 0
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found; DiracX $DIRACX_VERSION needs Python >= 3.11 (set DIRACX_PYTHON)"
    command -v git >/dev/null || die "git not found; the DiracX configuration is a git repository (apt-get install git)"
    command -v curl >/dev/null || die "curl not found; this script uses it to wait for the servers (apt-get install curl)"
    log "installing DiracX $DIRACX_VERSION into $VENV (once: under a minute with uv, minutes with pip)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    sed -n '/^# BEGIN CONSTRAINTS$/,/^# END CONSTRAINTS$/p' "${BASH_SOURCE[0]}" | grep -v '^#' >"$STATE/constraints.txt"
    local packages=(
        "diracx-routers==$DIRACX_VERSION" "diracx-testing==$DIRACX_VERSION"
        "diracx-cli==$DIRACX_VERSION" "diracx-db==$DIRACX_VERSION" "diracx-core==$DIRACX_VERSION"
        "diracx-logic==$DIRACX_VERSION" "moto[server]" uvicorn
    )
    if ! uv_install "${packages[@]}"; then
        "$VENV/bin/pip" install --quiet --disable-pip-version-check \
            -c "$STATE/constraints.txt" "${packages[@]}" \
            || die "pip could not install DiracX $DIRACX_VERSION into $VENV (see pip's message above)"
    fi
    touch "$stamp"
}

# One-time secrets: token signing keys, the state key, the legacy-exchange API key.
init_state() {
    [[ -f "$STATE/server.env" ]] && return 0
    log "creating keys and SQLite database locations under $STATE"
    mkdir -p "$STATE/db"
    chmod 700 "$STATE"
    "$VENV/bin/python" - "$STATE" <<'PY'
import base64, hashlib, json, os, secrets, shlex, sys
from pathlib import Path

from cryptography.fernet import Fernet
from joserfc.jwk import KeySet, OKPKey

state = Path(sys.argv[1])
key = OKPKey.generate_key(parameters={"key_ops": ["sign", "verify"], "alg": "Ed25519",
                                      "kid": secrets.token_hex(16)})
api_key = secrets.token_bytes(32)
(state / "legacy-api-key").write_text(base64.urlsafe_b64encode(api_key).decode())
os.chmod(state / "legacy-api-key", 0o600)
env = {
    "DIRACX_CONFIG_BACKEND_URL": f"git+file://{state / 'cs-repo'}",
    "DIRACX_SERVICE_AUTH_TOKEN_ISSUER": "http://127.0.0.1/diracx",
    "DIRACX_SERVICE_AUTH_TOKEN_KEYSTORE": json.dumps(KeySet([key]).as_dict(private=True)),
    "DIRACX_SERVICE_AUTH_STATE_KEY": Fernet.generate_key().decode(),
    "DIRACX_SERVICE_AUTH_ALLOWED_REDIRECTS": "[]",
    "DIRACX_LEGACY_EXCHANGE_HASHED_API_KEY": hashlib.sha256(api_key).hexdigest(),
}
for name in ("AuthDB", "JobDB", "JobLoggingDB", "PilotAgentsDB", "ResourceStatusDB",
             "SandboxMetadataDB", "TaskQueueDB", "TransformationDB"):
    env[f"DIRACX_DB_URL_{name.upper()}"] = f"sqlite+aiosqlite:///{state}/db/{name}.db"
env["DIRACX_OS_DB_JOBPARAMETERSDB"] = json.dumps(
    {"sqlalchemy_dsn": f"sqlite+aiosqlite:///{state}/db/JobParametersDB.db"})
with open(state / "server.env", "w") as f:
    os.chmod(state / "server.env", 0o600)
    for k, v in env.items():
        f.write(f"{k}={shlex.quote(v)}\n")
PY
}

# The DIRAC configuration (CS) as a git repository; committed again when it changes.
write_cs() {
    "$VENV/bin/python" - "$STATE/cs-repo" <<'PY'
import sys
from pathlib import Path

from git import Repo
from diracx.core.config.schema import Config

repo_dir = Path(sys.argv[1])
repo = Repo(repo_dir) if (repo_dir / ".git").is_dir() else Repo.init(repo_dir, initial_branch="master")
db = {"DBName": "unused", "Host": "unused", "Port": 0}
users = {"esap-user-0001": {"PreferedUsername": "esap-user", "Email": None},
         "esap-pilot-0001": {"PreferedUsername": "esap-pilot", "Email": None}}
cs = Config.model_validate({
    "DIRAC": {},
    "Registry": {"esap": {
        "DefaultGroup": "esap_user",
        "IdP": {"URL": "https://idp.invalid", "ClientID": "esap-dask-test"},
        "Users": users,
        "Groups": {
            "esap_user": {"Properties": ["NormalUser"], "Users": ["esap-user-0001"]},
            "esap_pilot": {"Properties": ["GenericPilot", "JobAdministrator"],
                           "Users": ["esap-pilot-0001"]},
        },
    }},
    "Operations": {},
    # DIRAC platforms and the OS they run on, needed to accept a JDL's Platform
    "Resources": {"Computing": {"OSCompatibility": {
        "EL9-x86_64": ["EL9-x86_64", "el9", "rhel9", "alma9", "rocky9", "debian12"],
        "EL8-x86_64": ["EL8-x86_64", "el8", "rhel8", "alma8", "rocky8"],
    }}},
    "Systems": {"WorkloadManagement": {"Databases": {
        name: dict(db, **({"MaxRescheduling": 3} if name == "JobDB" else {}))
        for name in ("JobDB", "JobLoggingDB", "PilotAgentsDB", "SandboxMetadataDB",
                     "TaskQueueDB", "ElasticJobParametersDB", "VirtualMachineDB")}}},
})
text = cs.model_dump_json(by_alias=True)
cs_file = repo_dir / "default.yml"
if not cs_file.is_file() or cs_file.read_text() != text:
    cs_file.write_text(text)
    repo.index.add(["default.yml"])
    repo.index.commit("esap-dask test configuration")
    print("changed")
PY
}

start_moto() {
    alive moto && return 0
    log "starting moto S3 on $S3_URL"
    nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$STATE/moto.log" 2>&1 &
    echo $! >"$STATE/moto.pid"
    wait_for "$S3_URL/moto-api/" moto
}

start_server() {
    alive server && return 0
    log "starting DiracX $DIRACX_VERSION on $URL (log: $STATE/server.log)"
    (
        set -a
        # shellcheck disable=SC1091
        source "$STATE/server.env"
        set +a
        export DIRACX_SANDBOX_STORE_BUCKET_NAME=sandboxes
        export DIRACX_SANDBOX_STORE_AUTO_CREATE_BUCKET=true
        export DIRACX_SANDBOX_STORE_S3_CLIENT_KWARGS="{\"endpoint_url\": \"$S3_URL\", \"aws_access_key_id\": \"testing\", \"aws_secret_access_key\": \"testing\"}"
        export DIRACX_SERVICE_AUTH_ACCESS_TOKEN_EXPIRE_MINUTES="${DIRACX_ACCESS_TOKEN_MINUTES:-20}"
        export DIRACX_SERVICE_AUTH_REFRESH_TOKEN_EXPIRE_MINUTES="${DIRACX_REFRESH_TOKEN_MINUTES:-720}"
        export DIRACX_TASKS_REDIS_URL="redis://127.0.0.1:1"
        cd "$STATE"
        exec nohup "$VENV/bin/uvicorn" --factory diracx.testing.routers:create_app \
            --host 127.0.0.1 --port "$PORT" --log-level warning >"$STATE/server.log" 2>&1
    ) &
    echo $! >"$STATE/server.pid"
    wait_for "$URL/api/health/ready" server
}

wait_for() {  # URL NAME: wait until URL answers 200, or die with the log's tail
    local i
    for i in $(seq 1 120); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        alive "$2" || { tail -30 "$STATE/$2.log" >&2; die "$2 exited; see $STATE/$2.log"; }
        sleep 0.5
    done
    tail -30 "$STATE/$2.log" >&2
    die "$2 did not answer $1 within 60 s; see $STATE/$2.log"
}

# Tokens for the user and for the site, from the server (legacy exchange), written in
# the format of diracx.core.utils.write_credentials.
mint_credentials() {
    local who group out
    for spec in "esap-user esap_user credentials.json" "esap-pilot esap_pilot pilot-credentials.json"; do
        read -r who group out <<<"$spec"
        curl -fsS -G --retry 20 --retry-all-errors --retry-delay 1 "$URL/api/auth/legacy-exchange" \
            --data-urlencode "preferred_username=$who" \
            --data-urlencode "scope=vo:esap group:$group" \
            -H "Authorization: Bearer diracx:legacy:$(cat "$STATE/legacy-api-key")" \
            -o "$STATE/token.tmp" || die "the server refused to mint a token for $who; see $STATE/server.log"
        "$VENV/bin/python" - "$STATE/token.tmp" "$STATE/$out" <<'PY'
import sys
from pathlib import Path
from diracx.core.models import TokenResponse
from diracx.core.utils import write_credentials
tok = TokenResponse.model_validate_json(Path(sys.argv[1]).read_text())
write_credentials(tok, location=Path(sys.argv[2]))
PY
        rm -f "$STATE/token.tmp"
    done
}

start_site() {
    alive site && return 0
    [[ -x "$PROJECT_PYTHON" ]] || die "$PROJECT_PYTHON not found: the site runs jobs with the project's environment (create .venv, or set ESAP_PYTHON)"
    log "starting the local site (log: $STATE/site.log)"
    DIRACX_URL="$URL" DIRACX_CREDENTIALS_PATH="$STATE/pilot-credentials.json" \
        PATH="$(dirname "$PROJECT_PYTHON"):$PATH" \
        nohup "$PROJECT_PYTHON" -m esap_dask.testing.dirac_site \
        --jobdb "$STATE/db/JobDB.db" --workdir "$STATE/site" \
        --site "${DIRACX_SITE_NAME:-LCG.Local.esap}" --tags "${DIRACX_SITE_TAGS:-esap}" \
        --slots "${DIRACX_SITE_SLOTS:-16}" >"$STATE/site.log" 2>&1 &
    echo $! >"$STATE/site.pid"
    sleep 1
    alive site || { tail -20 "$STATE/site.log" >&2; die "the site exited; see $STATE/site.log"; }
}

print_env() {
    echo "export DIRACX_URL=$URL"
    echo "export DIRACX_CREDENTIALS_PATH=$STATE/credentials.json"
    echo "export ESAP_DIRAC_S3_ENDPOINT=$S3_URL"
    # the dirac facility's object store: s3://<bucket>/<name>.zarr stores on the local moto S3
    echo "export DASK_ESAP__FACILITIES__DIRAC__STORAGE_OPTIONS='{\"key\": \"testing\", \"secret\": \"testing\", \"client_kwargs\": {\"endpoint_url\": \"$S3_URL\"}}'"
}

stop_one() {
    if alive "$1"; then
        local pid; pid="$(cat "$STATE/$1.pid")"
        log "stopping $1 (pid $pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$STATE/$1.pid"
}

case "${1:-}" in
    start)
        mkdir -p "$STATE"
        install_venv
        init_state
        if [[ "$(write_cs)" == changed ]] && alive server; then
            log "the configuration changed: restarting the server"
            stop_one server
        fi
        start_moto
        start_server
        mint_credentials
        start_site
        log "DiracX $DIRACX_VERSION answers on $URL; use it with:"
        print_env
        ;;
    stop)
        for what in site server moto; do stop_one "$what"; done
        ;;
    status)
        rc=0
        for what in moto server site; do
            if alive "$what"; then echo "$what: running (pid $(cat "$STATE/$what.pid"))"
            else echo "$what: stopped"; rc=3; fi
        done
        [[ $rc == 0 ]] && print_env
        exit $rc
        ;;
    env) print_env ;;
    *) echo "usage: bash scripts/diracx.sh start|stop|status|env" >&2; exit 2 ;;
esac
exit 0

# The exact versions tested with DiracX 0.7.0 (pip freeze of the server venv).
# BEGIN CONSTRAINTS
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiomysql==0.3.2
aiosignal==1.4.0
aiosqlite==0.22.1
annotated-doc==0.0.7
annotated-types==0.8.0
antlr4-python3-runtime==4.13.2
anyio==4.16.0
asgiref==3.13.0
attrs==26.1.0
aws-xray-sdk==2.15.0
azure-core==1.41.0
blinker==1.9.0
boto3==1.44.8
botocore==1.44.8
cachetools==8.0.2
certifi==2026.10.19.post1
cffi==2.1.1
cfn-lint==1.58.0
charset-normalizer==3.5.2
click==8.5.1
coverage==7.17.4
croniter==7.0.0
cryptography==50.0.2
diraccfg==1.0.1
DIRACCommon==9.1.22
diracx-api==0.7.0
diracx-cli==0.7.0
diracx-client==0.7.0
diracx-core==0.7.0
diracx-db==0.7.0
diracx-logic==0.7.0
diracx-routers==0.7.0
diracx-tasks==0.7.0
diracx-testing==0.7.0
dnspython==2.9.2
docker==7.2.0
email-validator==2.4.0
Events==0.5
execnet==2.1.2
fastapi==0.141.1
Flask==3.1.3
flask-cors==6.0.5
freezegun==1.5.5
frozenlist==1.8.0
gitdb==4.0.12
GitPython==3.2.1
googleapis-common-protos==1.76.0
graphql-core==3.3.2
greenlet==3.5.6
grpcio==1.85.3
h11==0.16.0
hiredis==3.5.0
httpcore==1.0.9
httpcore2==2.16.2
httpx==0.28.1
httpx2==2.16.2
idna==3.20
iniconfig==2.3.1
isodate==0.7.2
itsdangerous==2.2.0
Jinja2==3.1.6
jmespath==1.1.0
joserfc==1.8.0
jsonpatch==1.48
jsonpath-ng==1.16.0
jsonpointer==3.12
jsonschema==4.26.0
jsonschema-path==0.5.0
jsonschema-specifications==2025.9.1
lazy-object-proxy==1.13.0
markdown-it-py==4.3.0
MarkupSafe==3.0.4
mdurl==0.1.2
moto==5.2.5
mpmath==1.3.0
msgpack==1.2.4
multidict==7.2.1
networkx==3.6.1
openapi-schema-validator==0.9.0
openapi-spec-validator==0.9.0
opensearch-protobufs==1.2.0
opensearch-py==3.2.0
opentelemetry-api==1.45.2
opentelemetry-exporter-http-transport==0.66b2
opentelemetry-exporter-otlp==1.45.2
opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2
opentelemetry-exporter-otlp-proto-grpc==1.45.2
opentelemetry-exporter-otlp-proto-http==1.45.2
opentelemetry-instrumentation==0.66b2
opentelemetry-instrumentation-asgi==0.66b2
opentelemetry-instrumentation-fastapi==0.66b2
opentelemetry-instrumentation-logging==0.66b2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2
opentelemetry-util-http==0.66b2
orjson==3.13.0
packaging==26.3
pathable==0.6.0
pluggy==1.7.0
propcache==0.5.4
protobuf==7.36.2
py-partiql-parser==0.6.3
pycparser==3.12
pydantic==2.14.4
pydantic-settings==2.16.3
pydantic_core==2.50.5
Pygments==2.21.0
PyJWT==2.15.1
PyMySQL==1.2.0
pyparsing==3.3.3
pytest==9.2.0
pytest-github-actions-annotate-failures==0.4.2
pytest-asyncio==1.5.0
pytest-cov==7.1.0
pytest-xdist==3.8.0
python-dateutil==2.9.0.post0
python-dotenv==1.2.4
python-multipart==0.0.34
PyYAML==6.0.4
redis==8.1.0
referencing==0.37.0
regex==2026.11.19
requests==2.34.2
responses==0.26.3
rfc3339-validator==0.1.4
rich==15.0.0
rpds-py==2026.9.1
s3transfer==0.19.3
sh==2.4.0
shellingham==1.5.4
signurlarity==0.3.1
six==1.17.0
smmap==5.0.3
SQLAlchemy==2.1.9
starlette==1.10.0
sympy==1.14.0
truststore==0.10.5
typer==0.29.2
typing-inspection==0.4.5
typing_extensions==4.16.0
urllib3==2.8.0
uuid_utils==1.2.0
uvicorn==0.54.0
Werkzeug==3.1.9
wrapt==2.5.2
xmltodict==1.0.4
yarl==1.25.1
zstandard==0.25.0
# END CONSTRAINTS
