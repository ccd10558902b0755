"""A serving certificate rewritten on disk is served to new connections, without a restart."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from aiohttp import web
from cryptography import x509
from pki import issue, make_ca

from adapter.tls import CERT_CHECK_SECONDS, ServingTls


async def _served_serial(port: int, ca_pem: str) -> int:
    context = ssl.create_default_context(cadata=ca_pem)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).serial_number


async def test_rotated_serving_certificate_is_picked_up(tmp_path: Path) -> None:
    ca = make_ca("serving-ca")
    first = issue(ca, "wattscale", server_hosts=("127.0.0.1",))
    cert, key = first.write(tmp_path, "serving")
    clock = [0.0]
    tls = ServingTls(cert, key, request_client_certificates=False, clock=lambda: clock[0])
    runner = web.AppRunner(web.Application())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.listening_context).start()
    port = runner.addresses[0][1]
    try:
        assert await _served_serial(port, ca.cert_pem) == first.certificate.serial_number
        renewed = issue(ca, "wattscale", server_hosts=("127.0.0.1",))
        renewed.write(tmp_path, "serving")  # what a Secret update does to the mounted files
        clock[0] += CERT_CHECK_SECONDS
        assert await _served_serial(port, ca.cert_pem) == renewed.certificate.serial_number
    finally:
        await runner.cleanup()
