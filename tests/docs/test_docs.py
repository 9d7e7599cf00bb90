"""The documentation site builds, its links resolve, and its references cannot drift from the code.

The configuration reference is compared with the loader's key sets and defaults, the command-line
reference with ``webhook.cli.build_parser()``, and the production-files page with ``deploy/``, so a
key, a command, an option or a file added without its documentation fails here.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import re
import subprocess
import sys
import tomllib
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from webhook.cli import build_parser
from workers import config as loader
from workers.secrets import new_signing_key

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
HOOKS = DOCS / "_hooks"

FENCE = re.compile(r"^(`{3,}|~{3,})")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
EXPLICIT_ID = re.compile(r"\s*\{\s*#([\w-]+)[^}]*\}\s*$")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_ID = re.compile(r"""\bid=["']([^"']+)["']""")
EMBED = re.compile(r"^<!-- embed: (\S+) -->$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def pages() -> list[Path]:
    """Every markdown page of the site (the hook's directory is excluded from it)."""
    return sorted(p for p in DOCS.rglob("*.md") if HOOKS not in p.parents)


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` outside fenced code blocks, with inline code spans blanked out."""
    fence = ""
    for number, line in enumerate(text.splitlines(), start=1):
        opening = FENCE.match(line.lstrip())
        if fence:
            if opening and opening.group(1)[0] == fence[0] and len(opening.group(1)) >= len(fence):
                fence = ""
            continue
        if opening:
            fence = opening.group(1)
            continue
        yield number, re.sub(r"(`+)(?:(?!\1).)+?\1", lambda m: " " * len(m.group(0)), line)


def slugify(text: str) -> str:
    """Python-Markdown's toc slug for a heading's rendered text (``markdown.extensions.toc.slugify``)."""
    value = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def heading_text(raw: str) -> str:
    """What a heading renders as, without markup: code spans, links and emphasis reduced to text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", EXPLICIT_ID.sub("", raw))
    rendered = []
    for piece in re.split(r"(`+.+?`+)", text):  # odd pieces are code spans: their text stays as is
        if piece.startswith("`"):
            rendered.append(piece.strip("`").strip())
        else:  # emphasis by asterisks; intraword underscores (public_url) are not emphasis
            rendered.append(re.sub(r"<[^>]+>", "", re.sub(r"\*{1,3}(\S(?:.*?\S)?)\*{1,3}", r"\1", piece)))
    return html.unescape("".join(rendered))


@dataclass(frozen=True)
class Heading:
    level: int
    text: str  # as rendered: `code` and links reduced to their text
    source: str  # as written, without an explicit {#id}
    anchor: str
    line: int


def headings(text: str) -> list[Heading]:
    """The page's headings with the ids mkdocs gives them (explicit ``{#id}`` or the toc slug)."""
    found: list[Heading] = []
    seen: set[str] = set()
    raw_lines = text.splitlines()
    for number, line in prose_lines(text):
        match = HEADING.match(raw_lines[number - 1])
        if not match or not line.startswith("#"):
            continue
        raw = match.group(2)
        explicit = EXPLICIT_ID.search(raw)
        anchor = explicit.group(1) if explicit else slugify(heading_text(raw))
        base, count = anchor, 0
        while anchor in seen:  # the toc extension's unique(): _1, _2, … for repeated slugs
            count += 1
            anchor = f"{base}_{count}"
        seen.add(anchor)
        found.append(
            Heading(len(match.group(1)), heading_text(raw).strip(), EXPLICIT_ID.sub("", raw), anchor, number)
        )
    return found


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    return {h.anchor for h in headings(text)} | set(HTML_ID.findall(text))


def links(path: Path) -> Iterator[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    for number, line in prose_lines(text):
        for match in INLINE_LINK.finditer(line):
            yield number, match.group(1)
        definition = REFERENCE_DEF.match(line)
        if definition:
            yield number, definition.group(1)


def section(text: str, start: Heading, all_headings: list[Heading]) -> str:
    """The page's text from ``start`` to the next heading of the same or a higher level."""
    lines = text.splitlines()
    end = len(lines)
    for heading in all_headings:
        if heading.line > start.line and heading.level <= start.level:
            end = heading.line - 1
            break
    return "\n".join(lines[start.line - 1 : end])


# -- (1) the site builds ----------------------------------------------------------------------


def test_mkdocs_builds_the_site_in_strict_mode(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install mkdocs; it belongs in the dev and test extras)")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(MKDOCS_YML),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    built = tmp_path / "site"
    for page in pages():
        relative = page.relative_to(DOCS).with_suffix("")
        target = built / "index.html" if relative.name == "index" else built / relative / "index.html"
        assert target.is_file(), f"{page.relative_to(ROOT)} was not built into {target.relative_to(built)}"
    production = (built / "deploy-files" / "index.html").read_text(encoding="utf-8")
    assert "<!-- embed:" not in production
    assert "is not in this checkout yet" not in production


# -- (2) links, navigation and embedded files ------------------------------------------------


def test_every_relative_link_resolves_to_a_page_or_file_and_its_anchor() -> None:
    problems = []
    for page in pages():
        where = page.relative_to(ROOT)
        for number, target in links(page):
            if SCHEME.match(target) or target.startswith("//"):
                continue  # external: not ours to check offline
            if target.startswith("/"):
                problems.append(f"{where}:{number}: {target}: absolute paths break under a site prefix")
                continue
            path_part, _, anchor = target.partition("#")
            destination = page if not path_part else (page.parent / path_part).resolve()
            if path_part and not destination.is_relative_to(DOCS):
                problems.append(f"{where}:{number}: {target}: outside docs/, so missing from the site")
                continue
            if not destination.exists():
                problems.append(f"{where}:{number}: {target}: no such file")
                continue
            if anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                problems.append(f"{where}:{number}: {target}: {destination.name} has no anchor #{anchor}")
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_checker_notices_a_broken_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A `code` heading\n\n## Keys {#keys}\n\n## Keys\n\n```\n# not a heading\n```\n"
        "[ok](#a-code-heading) [ok](#keys) [ok](#keys_1) [bad](#not-a-heading) `[no](#code-span)`\n",
        encoding="utf-8",
    )
    assert anchors(page) == {"a-code-heading", "keys", "keys_1"}
    assert [target for _, target in links(page)] == ["#a-code-heading", "#keys", "#keys_1", "#not-a-heading"]


def nav_entries() -> list[str]:
    """The pages mkdocs.yml's nav names (``Title: page.md`` lines), without needing PyYAML."""
    text = MKDOCS_YML.read_text(encoding="utf-8")
    nav = text.split("\nnav:", 1)[1]
    return re.findall(r"^\s*-\s+[^:\n]+:\s+(\S+\.md)\s*$", nav, re.MULTILINE)


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    listed = nav_entries()
    on_disk = {str(p.relative_to(DOCS)) for p in pages()}
    assert "guarantees.md" in listed
    assert sorted(on_disk - set(listed)) == [], "pages missing from mkdocs.yml's nav"
    assert sorted(set(listed) - on_disk) == [], "nav entries without a page"
    if (DOCS / "benchmarks.md").exists():
        assert "benchmarks.md" in listed


def test_embedded_files_exist_and_every_deploy_file_is_documented() -> None:
    production = (DOCS / "deploy-files.md").read_text(encoding="utf-8")
    assert EMBED.findall(production), "deploy-files.md embeds nothing"
    embedded = [name for page in pages() for name in EMBED.findall(page.read_text(encoding="utf-8"))]
    missing = [name for name in embedded if not (ROOT / name).is_file()]
    assert not missing, f"embedded files that do not exist: {missing}"
    deploy = ROOT / "deploy"
    if not deploy.is_dir():
        pytest.skip("no deploy/ directory in this checkout")
    everything = "\n".join(p.read_text(encoding="utf-8") for p in pages())
    undocumented = sorted(
        str(path.relative_to(ROOT))
        for path in deploy.rglob("*")
        if path.is_file()
        and str(path.relative_to(ROOT)) not in everything
        and "__pycache__" not in path.parts
    )
    assert not undocumented, f"files in deploy/ that no page names: {undocumented}"


# -- (3) the configuration reference cannot drift ------------------------------------------------

SECTIONS = {
    "server": loader.SERVER_KEYS,
    "gitlab": loader.GITLAB_KEYS,
    "auth": loader.AUTH_KEYS,
    "projects": loader.PROJECT_ONLY_KEYS | loader.FLAT_ONLY_KEYS,
    "environment-keys": loader.ENV_KEYS,
    "notify": loader.NOTIFY_KEYS,
}
KEY_HEADING = re.compile(r"^`([a-z_]+)`$")


def documented_keys() -> dict[str, dict[str, str]]:
    """``{section id: {key: its entry's text}}`` from docs/configuration.md."""
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    found = headings(text)
    result: dict[str, dict[str, str]] = {}
    current = ""
    for heading in found:
        if heading.level == 2:
            current = heading.anchor if heading.anchor in SECTIONS else ""
            if current:
                result[current] = {}
        elif heading.level == 3 and current:
            key = KEY_HEADING.match(heading.source)
            assert key, (
                f"configuration.md:{heading.line}: a key heading must be just `key`, not {heading.source!r}"
            )
            assert key.group(1) not in result[current], f"{key.group(1)} documented twice in [{current}]"
            result[current][key.group(1)] = section(text, heading, found)
    return result


def test_the_configuration_reference_documents_exactly_the_loaders_keys() -> None:
    documented = documented_keys()
    assert set(documented) == set(SECTIONS), "configuration.md lacks a section: " + ", ".join(
        sorted(set(SECTIONS) - set(documented))
    )
    problems = []
    for name, keys in SECTIONS.items():
        written = set(documented[name])
        problems += [
            f"[{name}] {key}: the loader accepts it, the reference does not document it"
            for key in sorted(keys - written)
        ]
        problems += [
            f"[{name}] {key}: documented, but the loader does not accept it" for key in sorted(written - keys)
        ]
    assert not problems, "\n".join(problems)


def test_every_documented_key_has_a_type_a_default_and_an_example() -> None:
    problems = [
        f"{name}.{key}: no **{field}** line"
        for name, keys in documented_keys().items()
        for key, entry in keys.items()
        for field in ("Type", "Default", "Example")
        if f"- **{field}**:" not in entry
    ]
    assert not problems, "\n".join(problems)


def documented_default(entry: str) -> tuple[bool, Any]:
    """The code span a ``- **Default**:`` line starts with, as TOML; ``(False, None)`` for "none (…)"."""
    line = next(line for line in entry.splitlines() if line.startswith("- **Default**:"))
    value = re.match(r"- \*\*Default\*\*: `([^`]+)`", line)
    if value is None:
        return False, None
    return True, tomllib.loads(f"v = {value.group(1)}")["v"]


def loaded_defaults(tmp_path: Path) -> dict[str, dict[str, Any]]:
    """What the loader makes of a configuration that sets only what it must."""
    path = tmp_path / "minimal.toml"
    path.write_text(
        '[gitlab]\nurl = "https://gitlab.example.org"\ntoken = "t0ken-value"\n'
        '[projects.app]\ngitlab_project = "g/app"\nrepo_url = "https://gitlab.example.org/g/app.git"\n'
        'secret_token = "hook-token-value"\n',
        encoding="utf-8",
    )
    settings = loader.load(path, environ={})
    assert settings.gitlab is not None
    project = settings.projects["app"]
    ((environment_name, environment),) = project.environments.items()
    server = {key: getattr(settings.server, key) for key in loader.SERVER_KEYS}
    server["data_dir"] = settings.server.data_dir.relative_to(tmp_path)
    projects: dict[str, Any] = {
        key: getattr(project, key) for key in loader.PROJECT_ONLY_KEYS if hasattr(project, key)
    }
    projects["environment"] = environment_name
    environments = {key: getattr(environment, key) for key in loader.ENV_KEYS}
    return {
        "server": server,
        "gitlab": {key: getattr(settings.gitlab, key) for key in loader.GITLAB_KEYS},
        "auth": {key: getattr(settings.auth, key) for key in loader.AUTH_KEYS},
        "projects": projects,
        "environment-keys": environments,
        "notify": {"urls": list(settings.notify.urls), "on": sorted(settings.notify.on)},
    }


def comparable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [comparable(v) for v in value]
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return value.as_posix().removeprefix("./")
    return value


def test_documented_defaults_are_the_loaders(tmp_path: Path) -> None:
    actual = loaded_defaults(tmp_path)
    problems = []
    for name, keys in documented_keys().items():
        for key, entry in keys.items():
            has_default, value = documented_default(entry)
            if not has_default or key not in actual[name]:
                continue
            expected = comparable(actual[name][key])
            if isinstance(value, str) and name == "server" and key == "data_dir":
                value = value.removeprefix("./")
            if value != expected:
                problems.append(f"{name}.{key}: documented default {value!r}, the loader's is {expected!r}")
    assert not problems, "\n".join(problems)


# -- (4) the command-line reference names every command and option ---------------------------


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every subcommand of the parser, nested ones included (``secrets rotate``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from commands(sub, (*path, name))


def cli_sections() -> dict[str, str]:
    """``{"secrets rotate": section text}`` for each ``pushdeploy …`` heading of docs/cli.md."""
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    found = headings(text)
    result = {}
    for heading in found:
        match = re.fullmatch(r"pushdeploy ([a-z][a-z -]*)", heading.text)
        if match:
            result[match.group(1).strip()] = section(text, heading, found)
    return result


def test_the_cli_reference_names_every_subcommand_and_no_other() -> None:
    documented = cli_sections()
    actual = {" ".join(path) for path, _ in commands(build_parser())}
    assert {"up", "worker", "gitlab-hook", "cancel"} <= actual
    assert sorted(actual - set(documented)) == [], "commands without a `pushdeploy …` heading in cli.md"
    assert sorted(set(documented) - actual) == [], "cli.md documents commands the parser does not have"


def test_the_cli_reference_mentions_every_option_of_each_subcommand() -> None:
    documented = cli_sections()
    problems = []
    for path, parser in commands(build_parser()):
        name = " ".join(path)
        text = documented.get(name, "")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            for option in action.option_strings:
                if option.startswith("--") and not re.search(
                    rf"(?<![\w-]){re.escape(option)}(?![\w-])", text
                ):
                    problems.append(f"pushdeploy {name}: option {option} is not in its section of cli.md")
    assert not problems, "\n".join(problems)


# -- examples ---------------------------------------------------------------------------------


def toml_blocks(page: Path) -> list[str]:
    return re.findall(r"^```toml\n(.*?)^```", page.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


@pytest.mark.parametrize(
    ("page", "index"), [("configuration.md", 0), ("quickstart.md", 0), ("review-apps.md", 0)]
)
def test_the_complete_configuration_examples_load(page: str, index: int, tmp_path: Path) -> None:
    text = toml_blocks(DOCS / page)[index]
    raw = tomllib.loads(text)
    signing = {
        value.removeprefix("env:")
        for project in raw["projects"].values()
        for value in [project.get("signing_token", "")]
        if isinstance(value, str) and value.startswith("env:")
    }
    environ = {
        name: new_signing_key() if name in signing else f"value-of-{name.lower()}-0123456789"
        for name in re.findall(r'"env:([A-Z0-9_]+)"', text)
    }
    path = tmp_path / "pushdeploy.toml"
    path.write_text(text, encoding="utf-8")
    settings = loader.load(path, environ=environ)
    assert settings.projects


def test_the_embed_hook_inserts_files_and_refuses_others(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("docs_embed_hook", HOOKS / "embed.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "a.conf").write_text("x = 1\n```inner```\n", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("do not publish\n", encoding="utf-8")
    page = (
        "<!-- embed: deploy/a.conf -->\n<!-- embed: deploy/../secret.txt -->\n<!-- embed: deploy/none -->\n"
    )
    out = hook.embed(page, tmp_path.resolve(), "page.md")
    assert "````\nx = 1\n```inner```\n````" in out  # a fence longer than any backtick run inside
    assert "do not publish" not in out
    assert out.count("is not in this checkout yet") == 2
