"""The host's pip settings, made usable inside a container build without writing them into the image.

`pip config list` (files and PIP_* variables) is read; every local path it names (a CA bundle, a wheel
directory, a file:// index, a constraints file) gets a read-only mount under /run/host-pip (a file:// index with its parent directory), and a pip.conf
pointing at those mounts is written to OUT_DIR. Printed, one per line: the `-v SRC:DST:ro` mounts for
`podman build` (the pip.conf's own directory first). The Dockerfile sees only PIP_CONFIG_FILE.

    python3 scripts/host_pip_settings.py OUT_DIR
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

MOUNT_ROOT = Path("/run/host-pip")
PATH_KEYS = {"cert", "client-cert", "find-links", "index-url", "extra-index-url", "constraint", "requirement"}
# Settings that describe the host itself, not how to reach the index: left out.
HOST_ONLY = {"target", "prefix", "root", "user", "cache-dir", "no-cache-dir", "src", "log", "build-dir"}


def host_settings(python: str) -> dict[str, str]:
    """{key: value} from `pip config list`; a later scope (environment) wins over an earlier one (files)."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True).stdout
    settings: dict[str, str] = {}
    for line in out.splitlines():
        name, _, value = line.partition("=")
        key = name.rsplit(".", 1)[-1]
        settings[key] = value.strip().strip("'\"")
    return settings


def main(out_dir: str, python: str = sys.executable) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mounts = [(out, MOUNT_ROOT / "conf")]
    lines = ["[global]"]
    for key, value in sorted(host_settings(python).items()):
        if key in HOST_ONLY:
            continue
        if key not in PATH_KEYS:
            lines.append(f"{key} = {value}")
            continue
        items = []
        for item in value.split():
            url = urlparse(item)
            local = Path(url.path) if url.scheme == "file" else Path(item) if not url.scheme else None
            if local is None or not local.exists():
                items.append(item)  # a URL (or a path this host lacks): as it is
                continue
            if local.is_file() and key in ("cert", "client-cert", "constraint", "requirement"):
                target = MOUNT_ROOT / "conf" / f"{key}-{len(mounts)}{local.suffix}"
                shutil.copyfile(local, out / target.name)  # a copy in the conf dir: one mount for all files
            elif key.endswith("index-url"):
                # The index's parent too: a file index's pages may link to files beside it (../../files/x.whl).
                target = MOUNT_ROOT / f"{key}-{len(mounts)}" / local.name
                mounts.append((local.parent, target.parent))
            else:
                target = MOUNT_ROOT / f"{key}-{len(mounts)}"
                mounts.append((local, target))
            items.append(f"file://{target}" if url.scheme == "file" else str(target))
        lines.append(f"{key} = {' '.join(items)}")
    (out / "pip.conf").write_text("\n".join(lines) + "\n")
    for src, dst in mounts:
        print(f"{src}:{dst}:ro")


if __name__ == "__main__":
    main(sys.argv[1])
