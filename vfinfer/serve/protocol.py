"""uvicorn's h11 protocol with a deadline for the request line and headers.

uvicorn hands a request to the app only once its headers are complete and has no deadline of
its own for them: a client that sends its headers a byte at a time holds a connection (and a
place under the connection limit) for as long as it likes. Here the headers of every request
on a connection, the first and each one after a keep-alive pause, must be complete within
``header_timeout_s`` of their first byte (of the connection, for the first), else the
connection is closed. Past ``max_connections`` open connections a new one is closed at once;
the app's own limit on requests in flight (``vfinfer.serve.guards.InFlight``) leaves health
probes out, so that load alone never makes the server look dead.
"""

from uvicorn.protocols.http.h11_impl import H11Protocol


def guarded_protocol(header_timeout_s, max_connections):
    """An ``H11Protocol`` class for ``uvicorn.Config(http=...)`` with that header deadline,
    closing any connection past ``max_connections`` open ones at once."""

    class HeaderDeadline(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._header_timer = None
            if len(self.connections) > max_connections:
                self.logger.warning("%d connections open: closing a new one",
                                    len(self.connections) - 1)
                transport.close()
                return
            self._arm()

        def data_received(self, data):
            if self._header_timer is None and self._between_requests():
                self._arm()
            super().data_received(data)
            if not self._between_requests():
                self._disarm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _between_requests(self):
            return self.cycle is None or self.cycle.response_complete

        def _arm(self):
            self._header_timer = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self):
            self._header_timer = None
            if self._between_requests() and not self.transport.is_closing():
                self.logger.info("closing a connection whose request headers took over "
                                 "%s s", header_timeout_s)
                self.transport.close()

    return HeaderDeadline
