"""`clipkit serve` flag checks that fail before any model loads or port opens."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from toolkit.cli import main
from toolkit.cli.serve import is_loopback


@pytest.mark.parametrize("args,fragment", [
    (["--mode", "zeroshot", "--head", "out/head"], "conflicts with --head"),
    (["--mode", "probe"], "--mode probe needs a head"),
    (["--labels", "no-such-labels.txt"], "labels file 'no-such-labels.txt' not found"),
    (["--label", "a", "--label", "A"], "duplicate label"),
    (["--templates", "peeple"], "did you mean 'people'"),
])
def test_bad_flags_exit_2_with_one_line(args, fragment):
    res = CliRunner().invoke(main, ["serve", *args])
    assert res.exit_code == 2, res.output
    assert fragment in res.output and res.output.startswith("error: ")


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                       ("127.0.0.2", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                       ("example.org", False)])
def test_loopback_hosts(host, loop):
    assert is_loopback(host) is loop


def test_help_teaches_the_endpoints_and_the_api_key_env():
    res = CliRunner().invoke(main, ["serve", "--help"])
    assert res.exit_code == 0
    assert "/v1/predict" in res.output and "CLIPKIT_API_KEY" in res.output and "SIGTERM" in res.output
