"""The README's curl examples, run exactly as written against a real server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import JFK, RunningServer

README = Path(__file__).resolve().parents[2] / "README.md"


def curl_examples() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("curl ")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_examples(server: RunningServer, tmp_path: Path) -> None:
    shutil.copy(JFK, tmp_path / "jfk.flac")
    examples = curl_examples()
    assert len(examples) == 5
    outputs = []
    for line in examples:
        command = line.replace("http://127.0.0.1:8000", server.url)
        done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert "ask not what your country" in json.loads(outputs[0])["text"]
    assert outputs[1].startswith("1\n00:00:00,")
    verbose = json.loads(outputs[2])
    assert verbose["words"][0]["word"].strip() == "And"
    assert "country" in outputs[3]
    assert '"type": "transcript.text.done"' in outputs[4]
