"""The documentation cannot drift from the code: the generated references (docs/configuration.md,
docs/cli.md) are what ``tools.gen_docs`` renders now, the config example is a valid config naming every
key, every environment variable the code reads is in docs/environment.md, every module is in
docs/layout.md, every route is in docs/http-api.md, and every relative link (and anchor) in README.md,
docs/ and cluster/README.md resolves. Reads files only: no Ray, no command run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tools import gen_docs

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
REGENERATE = gen_docs.COMMAND


# ---- generated references


@pytest.mark.parametrize("relative", sorted(gen_docs.GENERATED))
def test_generated_reference_is_current(relative):
    expected = gen_docs.render(relative)
    assert (ROOT / relative).read_text() == expected, (
        f"{relative} is out of date with {gen_docs.GENERATED[relative][0]}: run `{REGENERATE}` and commit it")


def test_the_generator_rewrites_only_between_its_markers():
    source, _ = gen_docs.GENERATED["docs/cli.md"]
    text = f"# hand-written\n\nkept\n\n{gen_docs.begin_marker(source)}\nstale\n{gen_docs.END}\n\nkept too\n"
    out = gen_docs.render("docs/cli.md", text)
    assert out.startswith("# hand-written\n\nkept\n\n") and out.endswith(f"{gen_docs.END}\n\nkept too\n")
    assert "stale" not in out and "### `raygbm run`" in out
    with pytest.raises(ValueError, match="markers"):
        gen_docs.render("docs/cli.md", "no markers here\n")


def test_every_config_key_and_command_is_in_the_references():
    from raygbm.config import PipelineConfig

    config = (DOCS / "configuration.md").read_text()
    for section, field in PipelineConfig.model_fields.items():
        assert f"### `{section}`" in config
        for key in field.annotation.model_fields:
            assert f"| `{key}` |" in config, f"{section}.{key}"
    cli = (DOCS / "cli.md").read_text()
    for command in ("generate", "preprocess", "run", "serve", "retrain", "loop status", "drift-report"):
        assert f"`raygbm {command}`" in cli


def _example() -> dict:
    text = (DOCS / "configuration.md").read_text()
    section = text.split("## An example with every key", 1)[1]
    return yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])


def _missing_keys(model: type, example: dict, where: str) -> list[str]:
    from tools.gen_docs import _nested_models

    missing = []
    for name, field in model.model_fields.items():
        if name not in example:
            missing.append(f"{where}{name}")
            continue
        subs = [sub for suffix, sub in _nested_models(field.annotation) if suffix == ""]
        if subs and isinstance(example[name], dict):
            missing += _missing_keys(subs[0], example[name], f"{where}{name}.")
    return missing


def test_the_configuration_example_is_valid_and_names_every_key():
    from raygbm.config import PipelineConfig

    example = _example()
    PipelineConfig.model_validate(example)  # unknown keys or bad values raise
    missing = _missing_keys(PipelineConfig, example, "")
    assert not missing, f"docs/configuration.md's example lacks {missing}: add them (the reference is generated)"


# ---- environment variables


def _table_names(path: Path) -> set[str]:
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", path.read_text(), re.M))


def _files(*folders: str) -> list[Path]:
    found = []
    for folder in folders:
        base = ROOT / folder
        paths = [base] if base.is_file() else base.rglob("*")
        found += [p for p in paths if p.is_file() and "__pycache__" not in p.parts
                  and p.suffix not in (".png", ".parquet", ".pyc", ".csv") and p != Path(__file__).resolve()]
    return found


def test_every_environment_variable_the_code_reads_is_in_the_table():
    table = _table_names(DOCS / "environment.md")
    used: dict[str, str] = {}
    for path in _files("src", "cluster", "pipelines", "bench", "tests", "Makefile", ".ci"):
        text = path.read_text(errors="replace")
        for name in re.findall(r"\bRAYGBM_[A-Z0-9_]*[A-Z0-9]\b", text):
            used.setdefault(name, str(path.relative_to(ROOT)))
        if path.suffix == ".py" and path.is_relative_to(ROOT / "src"):
            for name in re.findall(r"[\"'](?:RAY|MLFLOW)_[A-Z0-9_]*[A-Z0-9][\"']", text):
                used.setdefault(name[1:-1], str(path.relative_to(ROOT)))
        if path.suffix == ".sh" and path.is_relative_to(ROOT / "cluster" / "local"):
            for name in re.findall(r"\$\{?(RAY_[A-Z0-9_]*[A-Z0-9])\b", text):
                used.setdefault(name, str(path.relative_to(ROOT)))
    missing = {name: where for name, where in used.items() if name not in table}
    assert not missing, f"not in docs/environment.md's tables: {missing}"


def test_the_table_names_no_raygbm_variable_the_code_does_not_read():
    code = "\n".join(p.read_text(errors="replace")
                     for p in _files("src", "cluster", "pipelines", "bench", "tests", "Makefile", ".ci"))
    stale = [n for n in _table_names(DOCS / "environment.md") if n.startswith("RAYGBM_") and n not in code]
    assert not stale, f"docs/environment.md names variables nothing reads: {stale}"


# ---- layout and routes


def test_every_module_is_named_in_the_layout():
    layout = (DOCS / "layout.md").read_text()
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    names = {m.strip().removeprefix("raygbm.") for layer in contract["layers"] for m in re.split(r"[:|]", layer)}
    package = ROOT / "src" / "raygbm"
    names |= {p.stem for p in package.rglob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    missing = sorted(n for n in names if not re.search(rf"\b{re.escape(n)}\b", layout))
    assert not missing, f"docs/layout.md does not name {missing}"


def test_every_route_is_in_the_http_api_page():
    page = (DOCS / "http-api.md").read_text()
    routes = set()
    for path in (ROOT / "src" / "raygbm" / "serving" / "routes").glob("*.py"):
        routes |= set(re.findall(r"@router\.(?:get|post|put|delete|patch)\(\s*\"([^\"]+)\"", path.read_text()))
    assert "/predict" in routes and "/feedback" in routes
    missing = sorted(r for r in routes if r.replace("/versions/{version}", "") not in page)
    assert not missing, f"docs/http-api.md does not name {missing}"
    if any("/versions/{version}" in r for r in routes):
        assert "/versions/{version}" in page


# ---- links


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted((ROOT / "cluster").rglob("README.md"))]


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation but '-' and '_' dropped, spaces to '-'; repeats get -1, -2."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S),
                              re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_relative_link_resolves():
    broken = []
    for page in _markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _prose(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(ROOT)}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where} (no such heading)")
    assert not broken, broken


def test_the_anchor_rule_matches_github():
    page = DOCS / "security.md"
    assert {"nothing-listens-beyond-127001", "labels-the-loops-threat-model"} <= _anchors(page)


# ---- the README


def test_the_readme_is_short_and_starts_with_the_quickstart():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]
    assert text.index("## Quickstart") < text.index("## Contents") < text.index("## Status")
