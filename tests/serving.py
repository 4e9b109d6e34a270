"""``vfinfer serve`` in a subprocess for the serving tests: a free loopback port (port 0,
printed at start), stopped with SIGTERM; optionally with the batcher on a clock of the
test's own (see tests/test_serve.py)."""

import re
import select
import signal
import subprocess
import sys
import time

import httpx

START_TIMEOUT_S = 60
LINE = re.compile(r"on http://127\.0\.0\.1:(\d+)")
STILL = "lambda: 0.0"


def held_until(path):
    """A batcher clock (source text) that stands still until ``path`` exists, then jumps
    far ahead (and stands still again)."""
    return f"lambda: 1e9 if os.path.exists({str(path)!r}) else 0.0"


def server_code(clock=None):
    """``vfinfer serve``'s entry point, with the batcher on ``clock`` (source text) if given."""
    if clock is None:
        return "from vfinfer.cli import main; main()"
    return ("import functools, os\n"
            "import vfinfer.serve.app as app\n"
            f"app.Batcher = functools.partial(app.Batcher, clock={clock})\n"
            "from vfinfer.cli import main\n"
            "main()\n")


class Server:
    """``vfinfer serve`` in a subprocess; ``url`` once it listens."""

    def __init__(self, model_dir, *options, clock=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", server_code(clock), "serve", "--model", str(model_dir), "--host",
             "127.0.0.1", "--port", "0", "--threads", "2", *map(str, options)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = []
        self.signalled = False
        self.url = f"http://127.0.0.1:{self._wait_for_port()}"

    def _wait_for_port(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                self.output.append(line)
                found = LINE.search(line)
                if found:
                    return int(found.group(1))
            if self.proc.poll() is not None:
                break
        self.stop()
        raise AssertionError("the server did not start:\n" + "".join(self.output))

    def metric(self, name, client=None):
        text = (client or httpx).get(f"{self.url}/metrics").text
        found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
        return float(found.group(1)) if found else None

    def terminate(self):
        """SIGTERM once (a second one would only be ignored by the shutting-down server)."""
        self.signalled = True
        self.proc.send_signal(signal.SIGTERM)

    def wait_until_closed(self):
        """Until the server refuses connections: it got the signal and is shutting down."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/v1/health/live", timeout=5)
            except httpx.ConnectError:
                return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise AssertionError("the server still accepts connections after SIGTERM")

    def stop(self, timeout=30):
        """SIGTERM, then the exit code (killed, and the test failed, if it hangs)."""
        if self.proc.poll() is None and not self.signalled:
            self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError("the server did not stop on SIGTERM") from None
        finally:
            self.output.append(self.proc.stdout.read())
            self.proc.stdout.close()
        return self.proc.returncode


