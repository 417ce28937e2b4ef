"""`python -m sidecar.healthcheck`: exit 0 when /healthz answers 200, else 1.

For the task definition's healthCheck and the image's HEALTHCHECK: the image has
Python but no curl. Reads TASK_PROTECTION_PORT like the sidecar does. Never asks a
proxy: HTTP_PROXY in the image would otherwise send 127.0.0.1 to it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("TASK_PROTECTION_PORT", "").strip() or "31680"
    url = f"http://127.0.0.1:{port}/healthz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        sys.stderr.write(f"healthcheck: {url}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
