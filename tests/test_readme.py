"""The README names the commands that exist; docs/configuration.md's reference is generated and must stay current."""

import re

from textlora.config_doc import reference_markdown

from .conftest import REPO


def test_configuration_reference_is_current():
    doc = (REPO / "docs" / "configuration.md").read_text()
    match = re.search(r"<!-- config-reference:start[^>]*-->\n(.*?)\n<!-- config-reference:end -->", doc, re.S)
    assert match, "docs/configuration.md lost its config-reference markers"
    assert match.group(1) == reference_markdown(), "regenerate with: python -m textlora.config_doc --write"


def test_readme_names_the_two_commands_that_exist():
    readme = (REPO / "README.md").read_text()
    for script in ("scripts/quickstart.sh", "scripts/test.sh"):
        assert f"bash {script}" in readme
        assert (REPO / script).is_file()
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text().replace("-q -p no:cacheprovider", "")


def test_readme_fits_a_newcomer_and_its_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in ("README.md", "BENCHMARKS.md", *(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (REPO / page).read_text()):
            if "://" in target or target == "architecture.md" or target.endswith("/architecture.md"):
                continue  # web links; docs/architecture.md is another teammate's page
            assert ((REPO / page).parent / target).exists(), f"{page} links to missing {target}"


def test_benchmarks_page_shows_current_results_only():
    page = (REPO / "BENCHMARKS.md").read_text()
    headings = [line for line in page.splitlines() if line.startswith("## ")]
    assert len(headings) == len(set(headings)), "two sections share a heading"
    assert not re.search(r"(?<![\w.])/(?:tmp|work|home|root)/", page), "a machine path on the results page"
    for key in re.findall(r"<!-- ([\w-]+):start -->", page):
        assert list((REPO / "benchmarks" / "results").glob(f"{key}-*.md")), f"no raw output for section {key}"
