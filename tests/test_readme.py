"""The README's configuration reference is generated from the config dataclasses and must stay current."""

import re

from textlora.config_doc import reference_markdown

from .conftest import REPO


def test_readme_config_reference_is_current():
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- config-reference:start[^>]*-->\n(.*?)\n<!-- config-reference:end -->", readme, re.S)
    assert match, "README lost its config-reference markers"
    assert match.group(1) == reference_markdown(), "regenerate with: python -m textlora.config_doc"


def test_readme_names_the_two_commands_that_exist():
    readme = (REPO / "README.md").read_text()
    for script in ("scripts/quickstart.sh", "scripts/test.sh"):
        assert f"bash {script}" in readme
        assert (REPO / script).is_file()
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text().replace("-q -p no:cacheprovider", "")
