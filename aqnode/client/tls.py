"""TLS for the client's channels (SPEC 12): the CA to trust and an optional client
certificate, read from files when a channel is made."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class Tls:
    """``ca_file``: the PEM bundle to verify nodes with (None: the system's roots);
    ``cert_file`` and ``key_file``: this client's certificate, for nodes that require
    one (``[tls] require_client_cert``)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials; ValueError naming the file that cannot be read."""
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca_file, "CA file"),
            private_key=read_pem(self.key_file, "key file"),
            certificate_chain=read_pem(self.cert_file, "certificate file"),
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The same trust and certificate for the native protocol's TCP connections."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None:
            read_pem(self.cert_file, "certificate file")  # the same errors as gRPC's
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


def read_pem(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"the TLS {what} {path} holds no PEM data")
    return data


def credentials_for(tls: Tls | bool | None) -> grpc.ChannelCredentials | None:
    """``True``: TLS with the system's roots; a :class:`Tls`: as it says; None/False: none."""
    if tls is None or tls is False:
        return None
    return (Tls() if tls is True else tls).credentials()
