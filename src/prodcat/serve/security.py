"""The API key of the write endpoints (POST /v1/reload; more to come): the PRODCAT_API_KEY environment
variable, else the first line of the file `serve.api_key_file`; sent in the X-API-Key header and compared in
constant time. No key configured: the write endpoints answer 403 (they are off), never open."""
from __future__ import annotations

import hmac
import os
from pathlib import Path

from prodcat.errors import SettingsError
from prodcat.serve.problems import Problem

API_KEY_ENV = "PRODCAT_API_KEY"
API_KEY_HEADER = "X-API-Key"


def configured_key(settings: dict) -> str | None:
    """The key the write endpoints ask for (None: none configured)."""
    key = os.environ.get(API_KEY_ENV)
    if key is None and settings["api_key_file"]:
        path = Path(settings["api_key_file"])
        try:
            key = path.read_text().splitlines()[0] if path.stat().st_size else ""
        except OSError as exc:
            raise SettingsError(f"serve.api_key_file: {path.resolve()}: {exc.strerror or exc}") from None
    if key is not None and not key.strip():
        raise SettingsError(f"the API key ({API_KEY_ENV} or serve.api_key_file) is empty: give a key, or none")
    return None if key is None else key.strip()


def check_key(expected: str | None, given: str | None) -> None:
    """Nothing when `given` is the key; else a 401 (no key sent) or 403 (wrong key, or none configured)."""
    if expected is None:
        raise Problem(403, "forbidden", f"write endpoints are off: this service has no API key ({API_KEY_ENV} "
                      "or serve.api_key_file)", kind="forbidden")
    if not given:
        raise Problem(401, "unauthorized", f"send the API key in the {API_KEY_HEADER} header",
                      kind="unauthorized", headers={"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'})
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Problem(403, "forbidden", "wrong API key", kind="forbidden")
