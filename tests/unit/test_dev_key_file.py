"""The development encryption key file is created exclusively and private from the start (O_EXCL, 0600)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

# Runs in a child process: an audit hook sees every open() and os.open() of the key files, with their flags.
PROBE = """
import json, os, sys
from pathlib import Path
opened = []
def hook(event, args):
    if event == "open" and "encryption.key" in str(args[0]):
        opened.append([str(args[0]), args[1], args[2]])
sys.addaudithook(hook)
os.umask(0o022)
from shared.crypto import cipher_from_settings
cipher_from_settings(None, Path(sys.argv[1]), allow_generate=True)
print(json.dumps(opened))
"""


def test_the_development_key_file_is_written_with_o_excl_and_0600(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path)], cwd=root, capture_output=True, text=True, timeout=60, check=True
    )
    writes = [(path, flags) for path, mode, flags in json.loads(run.stdout) if flags & (os.O_WRONLY | os.O_RDWR)]
    assert writes, run.stdout
    for _, flags in writes:
        assert flags & os.O_EXCL and flags & os.O_CREAT
    key = tmp_path / "encryption.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_demo_refuses_production(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUIFANG_", "KAFKA_", "DATABASE_URL"))}
    from tests.unit.test_production_guard import SAFE

    env.update(SAFE)
    run = subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", "demo", "--loans", "1", "--no-agents"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "production" in run.stderr, run.stderr
