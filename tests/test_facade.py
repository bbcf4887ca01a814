"""The package facade: what ``import newsletter`` offers, what it costs, and the README's
"Using it as a library" example run as written."""

from __future__ import annotations

import email
import email.policy
import os
import re
import subprocess
import sys
from pathlib import Path

import newsletter
from newsletter import __version__
from newsletter._version import USER_AGENT
from newsletter.config import HttpSettings

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter: nothing imported by this test process helps it."""
    env = {**os.environ, "NEWSLETTER_SECRET": "test-secret"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )


def test_publisher_imports_from_the_package_in_a_fresh_process() -> None:
    done = python(
        "from newsletter import make_publisher, Publisher\n"
        "import newsletter.core\n"
        "assert make_publisher is newsletter.core.make_publisher\n"
        "assert Publisher is newsletter.core.Publisher\n"
    )
    assert done.returncode == 0, done.stderr


def test_every_public_name_resolves_in_a_fresh_process() -> None:
    done = python(
        "import newsletter\n"
        "missing = [n for n in newsletter.__all__ if getattr(newsletter, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert set(newsletter.__all__) <= set(dir(newsletter))\n"
        "print(len(newsletter.__all__))\n"
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(newsletter.__all__)
    for name in newsletter.__all__:
        assert getattr(newsletter, name) is not None


def test_importing_the_package_stays_cheap() -> None:
    """``import newsletter`` does not load core (and with it storage, render and mail)."""
    done = python(
        "import sys, newsletter\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('newsletter.core',"
        " 'newsletter.storage', 'newsletter.mail', 'newsletter.render', 'sqlalchemy')))\n"
        "print(heavy)\n"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_module_inside_the_package_imports_first_without_a_cycle() -> None:
    """Each imported first in a fresh process, before the facade has loaded anything."""
    for module in ("newsletter.mail.http", "newsletter.render.feeds", "newsletter.core"):
        done = python(f"import {module}")
        assert done.returncode == 0, (module, done.stderr)


def test_an_unknown_attribute_is_still_an_attribute_error() -> None:
    assert not hasattr(newsletter, "no_such_name")


def test_the_version_has_one_source() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'version = { attr = "newsletter._version.__version__" }' in pyproject
    assert not re.search(r'(?m)^version = "', pyproject)
    assert __version__ == newsletter.__version__
    assert HttpSettings().user_agent == USER_AGENT
    assert USER_AGENT.startswith(f"newsletter/{__version__} ")


def readme_library_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using it as a library\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the section holds one python example"
    return str(blocks[0])


def test_the_readme_library_example_runs(example_project: Path) -> None:
    done = python(readme_library_example(), cwd=example_project.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "Editorial: 3 new, 0 updated",
        "Field Notes: 2 new, 0 updated",
        "Open Source Digest: 2 new, 0 updated",
        "Tiny Links: 2 new, 0 updated",
        "issue 1: 1 sent, 0 failed",
    ]
    assert (example_project.parent / "feeds-out" / "rss.xml").is_file()
    [eml] = (example_project.parent / "outbox").glob("*/*.eml")
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert message["To"].addresses[0].addr_spec == "ada@example.com"


def test_the_readme_library_example_reports_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "newsletter.toml").write_text("[newsletter]\ntitle = 3\n")
    done = python(readme_library_example(), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"{tmp_path / 'newsletter.toml'}:1: newsletter.site_url: ")
    assert "Traceback" not in done.stderr
