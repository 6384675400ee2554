"""Container HEALTHCHECK: GET /health (liveness) on the local port; exit 0 if it answers 200."""

import os
import sys
import urllib.request

port = os.environ.get("CRM_PORT", "8000")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # any failure is "unhealthy"
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
