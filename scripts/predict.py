"""Sends image files to a running TorchServe and prints each JSON answer.

Usage:
    python -m scripts.predict IMAGE [IMAGE ...] [--url http://127.0.0.1:8080] [--model deepfake]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import requests


def predict_file(path: Path, url: str = "http://127.0.0.1:8080", model: str = "deepfake",
                 token: str | None = None, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """POSTs the file's bytes to /predictions/<model>; returns (HTTP status, parsed JSON)."""
    headers = {"Content-Type": "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = requests.post(f"{url}/predictions/{model}", data=path.read_bytes(), headers=headers, timeout=timeout)
    try:
        body = response.json()
    except ValueError:
        body = {"error": {"code": "non_json_response", "message": response.text[:500]}}
    return response.status_code, body


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: exits 1 if any image got a non-200 answer."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", type=Path, nargs="+")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="inference address")
    parser.add_argument("--model", default="deepfake")
    parser.add_argument("--token", default=os.environ.get("TS_INFERENCE_TOKEN"),
                        help="inference key when token auth is on (default: $TS_INFERENCE_TOKEN)")
    args = parser.parse_args(argv)
    failed = False
    for path in args.images:
        status, body = predict_file(path, args.url, args.model, args.token)
        print(f"{path} → HTTP {status}\n{json.dumps(body, indent=2)}")
        failed |= status != 200
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
