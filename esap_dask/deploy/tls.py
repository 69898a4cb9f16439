"""TLS for a Dask cluster: a certificate authority per cluster, credentials in a private directory.

Every cluster esap-dask starts speaks TLS by default. :func:`new_cluster_security`
creates a fresh certificate authority (CA) for one cluster, signs a single
certificate that the scheduler, the workers and the client present, and throws
the CA's private key away, so nobody can sign another member later. The files
live in a directory of mode 0700 (keys 0600) that only the cluster's owner can
read; on an HPC site that directory is on the shared home file system, so batch
jobs running as the same user read it by path and nothing is ever world-readable.

Workers that share no file system with the client (grid jobs) get the same
credentials in memory instead: :func:`worker_tls_environment` gives the Dask
configuration environment variables that carry the PEM text, to be put in the
job's (private) environment.

Examples
--------
>>> security = new_cluster_security()                      # doctest: +SKIP
>>> cluster = LocalCluster(security=security, protocol="tls://")  # doctest: +SKIP
>>> remove_cluster_security(security)                      # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import os
import shutil
import signal
import socket
import tempfile
import threading
from pathlib import Path
from types import FrameType

from distributed.security import Security

__all__ = [
    "DEFAULT_TLS_ROOT",
    "clean_credentials_on_sigterm",
    "grid_worker_security",
    "new_cluster_security",
    "remove_all_credentials",
    "remove_cluster_security",
    "security_directory",
    "worker_tls_arguments",
    "worker_tls_environment",
]

#: Where per-cluster credential directories go when no directory is given.
DEFAULT_TLS_ROOT = Path("~/.esap-dask/tls")

_CA_FILE = "ca.pem"
_CERT_FILE = "member.pem"
_KEY_FILE = "member-key.pem"
_VALIDITY = datetime.timedelta(days=30)
#: The grid workers' certificates and keys (PEM text, never on disk), by CA file path.
_GRID_WORKERS: dict[str, dict[str, str]] = {}
#: Credential directories of this process not yet removed (cleaned on SIGTERM and exit).
_LIVE: set[Path] = set()


def _private_directory(directory: Path | None) -> Path:
    if directory is None:
        root = DEFAULT_TLS_ROOT.expanduser()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        return Path(tempfile.mkdtemp(prefix="cluster-", dir=root))
    directory = directory.expanduser()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def new_cluster_security(directory: Path | None = None) -> Security:
    """Create a per-cluster CA and one member certificate; return a Security that requires TLS.

    Parameters
    ----------
    directory
        Where to write ``ca.pem``, ``member.pem`` and ``member-key.pem``. It is
        created with mode 0700 (or tightened to it). ``None`` makes a fresh
        directory under ``~/.esap-dask/tls/``, which batch jobs of the same user
        can read on sites with a shared home.

    Returns
    -------
    distributed.security.Security
        ``require_encryption=True``; the same certificate for the client, the
        scheduler and the workers, each verified against the cluster's own CA.

    Examples
    --------
    >>> security = new_cluster_security()            # doctest: +SKIP
    >>> security.get_tls_config_for_role("worker")   # doctest: +SKIP
    {'ca_file': '.../ca.pem', 'key': '.../member-key.pem', 'cert': '.../member.pem', ...}
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as err:  # pragma: no cover - cryptography is a distributed extra
        raise ImportError(
            "TLS between scheduler and workers needs the 'cryptography' package: "
            "pip install cryptography (or open the cluster with tls: false)"
        ) from err

    folder = _private_directory(directory)
    _LIVE.add(folder)
    clean_credentials_on_sigterm()
    now = datetime.datetime.now(datetime.UTC)
    tag = folder.name
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"esap-dask CA {tag}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def member(role: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        # Every member is also a TLS server: workers serve each other, the scheduler
        # and the client; so serverAuth and clientAuth for both roles.
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, f"esap-dask {role}{tag}"),
                        x509.NameAttribute(
                            NameOID.ORGANIZATIONAL_UNIT_NAME, role.strip() or "member"
                        ),
                    ]
                )
            )
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )

    host = socket.gethostname()
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.DNSName(host),
        x509.DNSName("dask-internal"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = member("", key)
    grid_key = ec.generate_private_key(ec.SECP256R1())
    grid_cert = member("worker ", grid_key)
    pem = serialization.Encoding.PEM
    _write_private(folder / _CA_FILE, ca_cert.public_bytes(pem))
    _write_private(folder / _CERT_FILE, cert.public_bytes(pem))
    _write_private(
        folder / _KEY_FILE,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    ca, crt, k = (str(folder / n) for n in (_CA_FILE, _CERT_FILE, _KEY_FILE))
    _GRID_WORKERS[ca] = {
        "ca_file": ca_cert.public_bytes(pem).decode(),
        "cert": grid_cert.public_bytes(pem).decode(),
        "key": grid_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    }
    return Security(
        require_encryption=True,
        tls_ca_file=ca,
        tls_client_cert=crt,
        tls_client_key=k,
        tls_scheduler_cert=crt,
        tls_scheduler_key=k,
        tls_worker_cert=crt,
        tls_worker_key=k,
    )


def security_directory(security: Security) -> Path | None:
    """The private directory of a Security made by :func:`new_cluster_security` (else ``None``)."""
    ca = getattr(security, "tls_ca_file", None)
    if not ca or "\n" in ca:
        return None
    folder = Path(ca).parent
    return folder if (folder / _KEY_FILE).exists() else None


def remove_cluster_security(security: Security) -> None:
    """Delete the credential directory of ``security`` (call it when the cluster closes)."""
    folder = security_directory(security)
    _GRID_WORKERS.pop(str(getattr(security, "tls_ca_file", "")), None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        _LIVE.discard(folder)


def grid_worker_security(security: Security) -> Security:
    """The credentials of a worker that shares nothing with the client (a grid job).

    A certificate of its own, signed by the cluster's CA (whose key is gone), with
    its key, all in memory (PEM text): it is what a grid job's input sandbox
    carries. Neither the scheduler's and client's key nor the CA's key leaves the
    submitting machine. The scheduler requires a certificate from the cluster's CA
    of every peer (``ssl.CERT_REQUIRED``).

    The limit: Dask authorizes no roles, so a process holding the worker's key can
    still connect to the scheduler as a client would; what it cannot do is sign
    other certificates or present the scheduler's identity (``OU=worker``).

    Raises
    ------
    ValueError
        When ``security`` was not made by :func:`new_cluster_security` in this process.
    """
    pems = _GRID_WORKERS.get(str(getattr(security, "tls_ca_file", "")))
    if pems is None:
        raise ValueError(
            "grid_worker_security needs the Security of new_cluster_security() from this "
            "process (the worker certificate is kept in memory only); open the cluster with tls"
        )
    return Security(
        require_encryption=True,
        tls_ca_file=pems["ca_file"],
        tls_worker_cert=pems["cert"],
        tls_worker_key=pems["key"],
    )


def worker_tls_arguments(security: Security) -> list[str]:
    """``dask worker`` command-line options that make a worker use ``security`` (by file path).

    Examples
    --------
    >>> worker_tls_arguments(new_cluster_security())   # doctest: +SKIP
    ['--tls-ca-file', '.../ca.pem', '--tls-cert', '.../member.pem', '--tls-key', '...']
    """
    args: list[str] = []
    for key, value in security.get_tls_config_for_role("worker").items():
        if key in ("ca_file", "cert", "key") and value:
            args += ["--tls-" + key.replace("_", "-"), value]
    return args


def worker_tls_environment(security: Security) -> dict[str, str]:
    """Environment variables that carry the worker's credentials as PEM text (no file at all).

    For workers without a shared file system (grid jobs): put these in the job's
    private environment, never in a file others can read. Dask reads them as
    ``distributed.comm.tls.*`` configuration and accepts PEM text in place of paths.
    """
    cfg = security.get_tls_config_for_role("worker")

    def text(value: str | None) -> str:
        if not value:
            return ""
        return value if "\n" in value else Path(value).read_text()

    env = {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": text(cfg.get("ca_file")),
        "DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT": text(cfg.get("cert")),
        "DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY": text(cfg.get("key")),
    }
    return {k: v for k, v in env.items() if v}


def remove_all_credentials() -> int:
    """Delete every credential directory this process made and has not removed; how many.

    Runs at exit (``atexit``). A server whose shutdown ends with the signal that
    stopped it (uvicorn re-raises SIGTERM with its default action, so ``atexit``
    never runs) calls it at the end of its own shutdown, after its clusters closed.
    """
    removed = 0
    for folder in list(_LIVE):
        shutil.rmtree(folder, ignore_errors=True)
        _LIVE.discard(folder)
        removed += 1
    _GRID_WORKERS.clear()
    return removed


atexit.register(remove_all_credentials)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def clean_credentials_on_sigterm() -> bool:
    """Make SIGTERM remove this process's credential directories; ``True`` if installed.

    An ``atexit`` handler removes every directory :func:`new_cluster_security`
    made in this process and :func:`remove_cluster_security` did not; it runs on a
    normal exit and on ``SystemExit``, not when a signal kills the process. So,
    when SIGTERM still has its default action, this installs a handler that raises
    ``SystemExit(143)`` in the main thread: ``with`` blocks close their clusters,
    then ``atexit`` removes what is left. A handler already installed (the
    application's own) is left alone; a server that restores the default action
    and re-raises the signal after its graceful shutdown (uvicorn) calls
    :func:`remove_all_credentials` at the end of that shutdown instead. Only the
    main thread can install signal handlers: from another thread this does nothing
    and returns ``False``.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _terminate:
        return True
    if current is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _terminate)
    return True
