"""A proxy.py plugin that logs every tunnel asked for, when it is asked for.

proxy.py's own access-log line comes when a connection closes, and a kept-alive tunnel
stays open; a test counting CONNECTs needs the line when the request arrives. Loaded by
the proxy's process (``support.forwardproxy``), never by the tests.
"""

from __future__ import annotations

import logging

from proxy.http.parser import HttpParser
from proxy.http.proxy import HttpProxyBasePlugin

logger = logging.getLogger(__name__)


class LogConnects(HttpProxyBasePlugin):
    def before_upstream_connection(self, request: HttpParser) -> HttpParser | None:
        if request.method == b"CONNECT":
            host = (request.host or b"").decode("ascii", "replace")
            logger.info("tunnel-requested %s:%s", host, request.port)
        return request
