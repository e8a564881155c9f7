"""The node's TLS (SPEC 12): credentials for its gRPC port and for its peer channels,
checked at start and re-read on SIGHUP.

Every file is checked before gRPC sees it (readable, PEM, the key matching the
certificate, the CA loadable), so a misconfigured setup stops the node with one line
that names the file instead of failing handshakes later. A reload that finds a bad file
keeps the certificates in use and says why.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

import grpc

from aqnode import errors
from aqnode.client.tls import Tls, read_pem
from aqnode.config import TlsConfig

log = logging.getLogger("aqnode.supervisor")


@dataclass(frozen=True)
class _Files:
    cert: bytes
    key: bytes
    ca: bytes | None


def _read(cfg: TlsConfig) -> _Files:
    """The three files, checked; StartupError naming the file at fault."""
    try:
        cert = read_pem(cfg.cert_file, "certificate file [tls] cert_file")
        key = read_pem(cfg.key_file, "key file [tls] key_file")
        ca = read_pem(cfg.ca_file, "CA file [tls] ca_file")
    except ValueError as exc:
        raise errors.StartupError(str(exc)) from None
    assert cert is not None and key is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
    except ssl.SSLError as exc:
        raise errors.StartupError(
            f"[tls] key_file {cfg.key_file} does not match cert_file {cfg.cert_file}, or "
            f"one of them is not valid PEM ({exc.reason or exc})"
        ) from None
    if cfg.ca_file is not None:
        try:
            context.load_verify_locations(cafile=cfg.ca_file)
        except ssl.SSLError as exc:
            raise errors.StartupError(
                f"[tls] ca_file {cfg.ca_file} holds no usable CA certificate ({exc.reason or exc})"
            ) from None
    return _Files(cert, key, ca)


class NodeTls:
    """Server credentials that follow :meth:`reload`, and the peers' channel credentials."""

    def __init__(self, cfg: TlsConfig) -> None:
        self.config = cfg
        self._files = _read(cfg)
        self._pending: _Files | None = None  # a reload the next handshake picks up
        self._context: ssl.SSLContext | None = None  # the native port's, made when asked

    def ssl_context(self) -> ssl.SSLContext:
        """The native protocol's TCP port: the same certificate, CA and client-certificate
        rule as the gRPC port; :meth:`reload` updates it for new handshakes."""
        if self._context is None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.config.cert_file, self.config.key_file)
            if self.config.ca_file is not None:
                context.load_verify_locations(cafile=self.config.ca_file)
            context.verify_mode = (
                ssl.CERT_REQUIRED if self.config.require_client_cert else ssl.CERT_NONE
            )
            self._context = context
        return self._context

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._certificate_configuration(self._files),
            self._fetch,
            require_client_authentication=self.config.require_client_cert,
        )

    def peer_credentials(self) -> grpc.ChannelCredentials:
        """Peers trust ``ca_file`` (else the system's roots) and always present this
        node's certificate, so a peer that requires client certificates accepts them."""
        return Tls(self.config.ca_file, self.config.cert_file, self.config.key_file).credentials()

    def reload(self) -> None:
        """SIGHUP: read the files again; new handshakes use them (running ones go on)."""
        try:
            files = _read(self.config)
        except errors.StartupError as exc:
            log.error("SIGHUP: TLS files not reloaded, the current ones stay in use: %s", exc)
            return
        self._files = self._pending = files
        if self._context is not None:  # checked above: the same files load here too
            self._context.load_cert_chain(self.config.cert_file, self.config.key_file)
        log.info("SIGHUP: TLS certificates reloaded from %s", self.config.cert_file)

    def _certificate_configuration(self, files: _Files) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(files.key, files.cert)], root_certificates=files.ca
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # gRPC asks before each handshake; None keeps the current configuration.
        pending, self._pending = self._pending, None
        return None if pending is None else self._certificate_configuration(pending)
