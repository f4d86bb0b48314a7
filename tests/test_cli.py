"""The CLI dispatcher: every verb answers --help, unknown verbs fail kindly."""

import subprocess
import sys

import pytest

from gptqwen.cli import VERBS, main


def test_top_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


def test_unknown_verb(capsys):
    assert main(["pretrian"]) == 2
    err = capsys.readouterr().err
    assert "pretrain" in err and "Traceback" not in err


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_verb_help(verb):
    r = subprocess.run([sys.executable, "-m", "gptqwen", verb, "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "usage: gptqwen " + verb in r.stdout
