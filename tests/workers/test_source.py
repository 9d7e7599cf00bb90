"""The git wrapper against real repositories: incremental fetches, exports, and hostile repositories."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import GIT_ENV, GitRepo, git
from workers.source import InvalidSha, Mirror, SourceError, check_sha

HOOK_NAMES = (
    "reference-transaction",
    "post-checkout",
    "post-merge",
    "post-index-change",
    "pre-auto-gc",
    "post-rewrite",
    "fsmonitor-watchman",
)


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return {"PATH": os.environ["PATH"], "HOME": str(home)}


@pytest.fixture
def mirror(tmp_path: Path, git_repo: GitRepo, environ: dict[str, str]) -> Mirror:
    return Mirror(tmp_path / "data" / "mirrors" / "sample-app.git", git_repo.url, environ)


def head(repo: GitRepo) -> str:
    return git("rev-parse", "HEAD", cwd=repo.work)


def tree(root: Path) -> dict[str, str]:
    """Every regular file under ``root`` and its text; symlinks as ``-> target``."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.is_symlink():
            found[name] = "-> " + os.readlink(path)
        elif path.is_file():
            found[name] = path.read_text()
    return found


def install_hooks(hooks_dir: Path, canary: Path) -> None:
    hooks_dir.mkdir(parents=True, exist_ok=True)
    for name in HOOK_NAMES:
        hook = hooks_dir / name
        hook.write_text(f"#!/bin/sh\necho {name} >> '{canary}'\n")
        hook.chmod(0o755)


def plain_git(*args: str, env: dict[str, str] | None = None) -> None:
    """git without any of pushdeploy's hardening, to prove a trap would spring."""
    full = {"PATH": os.environ["PATH"], **GIT_ENV, **(env or {})}
    subprocess.run(["git", *args], env=full, check=True, capture_output=True)


# -- fetch and export -----------------------------------------------------------------


def test_fetch_then_export_writes_the_commit_without_git_metadata(
    mirror: Mirror, git_repo: GitRepo, tmp_path: Path
) -> None:
    sha = git_repo.commit({"src/app.py": "print('hi')\n", "app.txt": "v2\n"}, "second")
    assert mirror.fetch("main", sha) is True
    release = tmp_path / "releases" / "r1"
    mirror.export(sha, release)
    assert tree(release) == {
        "app.txt": "v2\n",
        "build.sh": "#!/bin/sh\necho building $PUSHDEPLOY_SHA\n",
        "src/app.py": "print('hi')\n",
    }
    assert os.access(release / "build.sh", os.X_OK)
    assert not any(p.name == ".git" for p in release.rglob("*"))
    assert not list(release.glob(".*"))


def test_export_of_an_older_commit_shows_that_commit(
    mirror: Mirror, git_repo: GitRepo, tmp_path: Path
) -> None:
    first = head(git_repo)
    second = git_repo.commit({"app.txt": "v2\n"}, "second")
    mirror.fetch("main", second)
    mirror.export(first, tmp_path / "old")
    mirror.export(second, tmp_path / "new")
    assert (tmp_path / "old" / "app.txt").read_text() == "v1\n"
    assert (tmp_path / "new" / "app.txt").read_text() == "v2\n"


def test_export_refuses_an_existing_release(mirror: Mirror, git_repo: GitRepo, tmp_path: Path) -> None:
    sha = head(git_repo)
    mirror.fetch("main", sha)
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "keep.txt").write_text("operator data\n")
    with pytest.raises(FileExistsError):
        mirror.export(sha, tmp_path / "release")
    assert tree(tmp_path / "release") == {"keep.txt": "operator data\n"}


def test_fetch_is_incremental(mirror: Mirror, git_repo: GitRepo) -> None:
    first = head(git_repo)
    assert mirror.fetch("main", first) is True
    # Cut the remote off: a present sha must not need it at all.
    hidden = git_repo.bare.with_name("hidden.git")
    git_repo.bare.rename(hidden)
    assert mirror.fetch("main", first) is False
    hidden.rename(git_repo.bare)

    second = git_repo.commit({"app.txt": "v2\n"}, "second")
    assert mirror.has_commit(second) is False
    assert mirror.fetch("main", second) is True
    assert mirror.has_commit(first) and mirror.has_commit(second)
    assert mirror.fetch("main", second) is False


def test_a_sha_on_another_branch_is_found(mirror: Mirror, git_repo: GitRepo, tmp_path: Path) -> None:
    mirror.fetch("main", head(git_repo))
    feature = git_repo.commit({"feature.txt": "new\n"}, "feature work", branch="feature")
    assert mirror.fetch("main", feature) is True
    mirror.export(feature, tmp_path / "release")
    assert (tmp_path / "release" / "feature.txt").read_text() == "new\n"


def test_a_force_pushed_away_sha_is_found_through_a_tag(mirror: Mirror, git_repo: GitRepo) -> None:
    orphan = git_repo.commit({"app.txt": "orphan\n"}, "soon force-pushed away")
    git("tag", "v1.0", orphan, cwd=git_repo.work)
    git("push", "--quiet", "origin", "refs/tags/v1.0", cwd=git_repo.work)
    git("reset", "--quiet", "--hard", "HEAD~1", cwd=git_repo.work)
    git("push", "--quiet", "--force", "origin", "HEAD:refs/heads/main", cwd=git_repo.work)
    assert mirror.fetch("main", orphan) is True


def test_a_missing_sha_is_a_clear_error(mirror: Mirror, git_repo: GitRepo) -> None:
    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(SourceError) as caught:
        mirror.fetch("main", missing)
    assert not isinstance(caught.value, InvalidSha)
    assert missing in str(caught.value) and "'main'" in str(caught.value)
    assert mirror.has_commit(head(git_repo))  # what could be fetched, was


def test_an_unreachable_remote_is_a_source_error(tmp_path: Path, environ: dict[str, str]) -> None:
    mirror = Mirror(tmp_path / "mirror.git", str(tmp_path / "no-such-repo.git"), environ)
    with pytest.raises(SourceError, match="git fetch failed"):
        mirror.fetch("main", "a" * 40)


def test_branch_head_reads_the_remote(tmp_path: Path, git_repo: GitRepo, environ: dict[str, str]) -> None:
    mirror = Mirror(tmp_path / "not-yet" / "mirror.git", git_repo.url, environ)
    assert mirror.branch_head("main") == head(git_repo)
    assert mirror.branch_head("no-such-branch") is None
    assert not (tmp_path / "not-yet").exists()


# -- sha validation happens before any git command ----------------------------------


@pytest.mark.parametrize(
    "sha",
    [
        "g" * 40,
        "a" * 39,
        "a" * 41,
        "a" * 63,
        "A" * 40,
        "",
        "HEAD",
        "main",
        "--upload-pack=touch /tmp/pushdeploy-canary",
        "-" + "a" * 39,
        "a" * 40 + "\n",
        "a" * 40 + " ",
        " " + "a" * 40,
        "a" * 20 + "..",
        "a" * 40 + "^{tree}",
    ],
)
def test_check_sha_refuses_anything_but_lowercase_hex(
    sha: str, tmp_path: Path, environ: dict[str, str]
) -> None:
    with pytest.raises(InvalidSha):
        check_sha(sha)
    missing = tmp_path / "does-not-exist"
    mirror = Mirror(missing / "mirror.git", "ext::sh -c touch% " + str(tmp_path / "canary"), environ)
    with pytest.raises(InvalidSha):
        mirror.fetch("main", sha)
    with pytest.raises(InvalidSha):
        mirror.has_commit(sha)
    with pytest.raises(InvalidSha):
        mirror.export(sha, missing / "release")
    assert not missing.exists()
    assert not (tmp_path / "canary").exists()


@pytest.mark.parametrize("sha", ["0123456789abcdef" * 2 + "01234567", "0123456789abcdef" * 4])
def test_check_sha_accepts_sha1_and_sha256(sha: str) -> None:
    assert check_sha(sha) == sha


def test_an_option_like_branch_is_never_an_option(mirror: Mirror, git_repo: GitRepo, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    sha = head(git_repo)
    assert mirror.fetch(f"--upload-pack=touch {canary}", sha) is True
    assert not canary.exists()


# -- hostile repositories and environments -----------------------------------------------


def test_hooks_in_the_mirror_never_run(mirror: Mirror, git_repo: GitRepo, tmp_path: Path) -> None:
    canary = tmp_path / "hook-canary"
    mirror.ensure()
    install_hooks(mirror.path / "hooks", canary)

    first = head(git_repo)
    mirror.fetch("main", first)
    second = git_repo.commit({"app.txt": "v2\n"}, "second", branch="other")
    mirror.fetch("main", second)
    mirror.export(second, tmp_path / "release")
    assert (tmp_path / "release" / "app.txt").read_text() == "v2\n"
    assert not canary.exists()

    # The control: the same hooks do run for git without pushdeploy's settings.
    plain_git("--git-dir", str(mirror.path), "update-ref", "refs/heads/control", first)
    assert "reference-transaction" in canary.read_text()


def test_template_hooks_never_reach_the_mirror(
    tmp_path: Path, git_repo: GitRepo, environ: dict[str, str]
) -> None:
    canary = tmp_path / "template-canary"
    template = tmp_path / "template"
    install_hooks(template / "hooks", canary)
    Path(environ["HOME"], ".gitconfig").write_text(f"[init]\n\ttemplateDir = {template}\n")
    hostile = {**environ, "GIT_TEMPLATE_DIR": str(template), "GIT_DIR": str(tmp_path / "elsewhere.git")}
    mirror = Mirror(tmp_path / "mirror.git", git_repo.url, hostile)

    sha = git_repo.commit({"app.txt": "v2\n"}, "second")
    mirror.fetch("main", sha)
    mirror.export(sha, tmp_path / "release")
    assert (tmp_path / "release" / "app.txt").read_text() == "v2\n"
    assert not canary.exists()
    assert not (tmp_path / "elsewhere.git").exists()

    # The control: a plain init with that template installs a hook that fires on fetch.
    control = str(tmp_path / "control.git")
    plain_git("init", "--quiet", "--bare", control, env={"GIT_TEMPLATE_DIR": str(template)})
    plain_git("--git-dir", control, "fetch", "--quiet", git_repo.url, "+refs/heads/*:refs/heads/*")
    assert canary.exists()


def test_submodules_are_never_fetched_nor_their_urls_run(
    mirror: Mirror, git_repo: GitRepo, tmp_path: Path
) -> None:
    library = GitRepo(tmp_path / "library")
    library_sha = library.commit({"LIBRARY.txt": "library content\n"}, "library")
    ext_canary, update_canary = tmp_path / "ext-canary", tmp_path / "update-canary"
    (git_repo.work / ".gitmodules").write_text(
        '[submodule "evil"]\n'
        "\tpath = evil\n"
        f"\turl = ext::sh -c touch% {ext_canary}\n"
        f"\tupdate = !touch {update_canary}\n"
        '[submodule "lib"]\n'
        "\tpath = lib\n"
        f"\turl = {library.url}\n"
    )
    for path in ("evil", "lib"):
        git("update-index", "--add", "--cacheinfo", f"160000,{library_sha},{path}", cwd=git_repo.work)
        (git_repo.work / path).mkdir()
    sha = git_repo.commit({"app.txt": "with submodules\n"}, "add submodules")
    listing = git("ls-tree", sha, cwd=git_repo.work)
    assert f"160000 commit {library_sha}\tevil" in listing and f"160000 commit {library_sha}\tlib" in listing

    assert mirror.fetch("main", sha) is True
    release = tmp_path / "release"
    mirror.export(sha, release)

    assert (release / "app.txt").read_text() == "with submodules\n"
    assert (release / ".gitmodules").is_file()  # exported as a plain file, never acted on
    assert not ext_canary.exists() and not update_canary.exists()
    for path in ("evil", "lib"):
        assert not (release / path).exists() or list((release / path).iterdir()) == []
    assert not list(release.rglob("LIBRARY.txt"))
    assert mirror.has_commit(library_sha) is False


def test_ext_transport_is_refused_even_as_the_repo_url(tmp_path: Path, environ: dict[str, str]) -> None:
    canary = tmp_path / "ext-canary"
    mirror = Mirror(tmp_path / "mirror.git", f"ext::sh -c touch% {canary}", environ)
    with pytest.raises(SourceError):
        mirror.fetch("main", "a" * 40)
    with pytest.raises(SourceError):
        mirror.branch_head("main")
    assert not canary.exists()


def test_symlinks_out_of_the_release_stay_links_and_write_nothing_outside(
    mirror: Mirror, git_repo: GitRepo, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    links = {
        "absolute-link": str(outside / "target.txt"),
        "relative-link": "../../../../../../outside/target.txt",
        "dir-link": str(outside),
        "etc-passwd": "/etc/passwd",
    }
    for name, target in links.items():
        os.symlink(target, git_repo.work / name)
    sha = git_repo.commit({"app.txt": "links\n"}, "symlinks")

    mirror.fetch("main", sha)
    release = tmp_path / "data" / "projects" / "app" / "production" / "releases" / "r1"
    mirror.export(sha, release)

    for name, target in links.items():
        assert (release / name).is_symlink()
        assert os.readlink(release / name) == target
    assert list(outside.iterdir()) == []


def test_the_repo_url_never_lands_in_the_mirror_config(mirror: Mirror, git_repo: GitRepo) -> None:
    mirror.fetch("main", head(git_repo))
    config = (mirror.path / "config").read_text()
    assert git_repo.url not in config
    assert "remote" not in config and "hooksPath" not in config


def test_errors_never_carry_repo_credentials(tmp_path: Path, environ: dict[str, str]) -> None:
    mirror = Mirror(tmp_path / "mirror.git", "https://deploy:canarypass@127.0.0.1:1/x.git", environ)
    with pytest.raises(SourceError) as fetch_error:
        mirror.fetch("main", "a" * 40)
    with pytest.raises(SourceError) as remote_error:
        mirror.branch_head("main")
    for error in (fetch_error.value, remote_error.value):
        assert "canarypass" not in str(error) and "canarypass" not in error.detail
        assert "canarypass" not in repr(error)
    assert "canarypass" not in (mirror.path / "config").read_text()


def test_two_workers_creating_one_mirror_both_succeed(tmp_path: Path) -> None:
    import threading

    from workers.source import Mirror as RacingMirror

    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def create() -> None:
        barrier.wait()
        try:
            RacingMirror(tmp_path / "mirrors" / "app.git", "/nonexistent.git").ensure()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert (tmp_path / "mirrors" / "app.git" / "HEAD").exists()
    assert [p.name for p in (tmp_path / "mirrors").iterdir()] == ["app.git"]


def test_git_never_reads_the_repository_it_is_started_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from inside a clone whose origin is another repository: the configured URL still wins."""
    from tests.helpers import GitRepo, git
    from workers.source import Mirror as CwdMirror

    ours = GitRepo(tmp_path / "ours")
    wanted = ours.commit({"a.txt": "ours\n"})
    other = GitRepo(tmp_path / "other")
    other.commit({"b.txt": "other\n"})
    git("remote", "set-url", "origin", str(other.bare), cwd=ours.work)
    monkeypatch.chdir(ours.work)
    assert CwdMirror(tmp_path / "none.git", ours.url).branch_head("main") == wanted


def test_repo_url_credentials_travel_as_a_header_not_in_any_command_line(tmp_path: Path) -> None:
    """git hands the remote URL to git-remote-https on its command line: the password must not be in it."""
    import base64
    import http.server
    import threading

    from workers.source import Mirror as HttpMirror
    from workers.source import SourceError as FetchError
    from workers.source import split_credentials

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://deploy:s3cret%2Fpw@127.0.0.1:{server.server_address[1]}/x.git"
    try:
        remote, header = split_credentials(url)
        assert remote == f"http://127.0.0.1:{server.server_address[1]}/x.git"
        mirror = HttpMirror(tmp_path / "m.git", url)
        with pytest.raises(FetchError) as caught:
            mirror.fetch("main", "a" * 40)
    finally:
        server.shutdown()
        server.server_close()
    assert seen and seen[0] == "Basic " + base64.b64encode(b"deploy:s3cret/pw").decode()
    assert header == f"Authorization: {seen[0]}"
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in (tmp_path / "m.git" / "config").read_text()


def test_a_commit_only_a_tag_holds_is_fetched_through_that_tag(
    mirror: Mirror, git_repo: GitRepo
) -> None:
    sha = git_repo.commit({"app.txt": "released\n"}, "release", branch="release")
    git("tag", "v9", cwd=git_repo.work)
    git("push", "--quiet", "origin", "v9", ":refs/heads/release", cwd=git_repo.work)
    assert mirror.fetch("refs/tags/v9", sha) is True
    assert mirror.has_commit(sha)
    assert git("--git-dir", str(mirror.path), "rev-parse", "refs/tags/v9", cwd=git_repo.work) == sha
    assert mirror.resolve("refs/tags/v9") == (sha, "refs/tags/v9")


@pytest.mark.parametrize(
    ("token", "sent"),
    [("glpat-repo-canary", "oauth2:glpat-repo-canary"), ("deployer:gldt-canary", "deployer:gldt-canary")],
)
def test_repo_token_is_the_https_credential_and_replaces_the_urls(
    tmp_path: Path, token: str, sent: str
) -> None:
    import base64
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://old:urlpass@127.0.0.1:{server.server_address[1]}/x.git"
    try:
        with pytest.raises(SourceError) as caught:
            Mirror(tmp_path / "m.git", url, token=token).fetch("main", "a" * 40)
    finally:
        server.shutdown()
        server.server_close()
    assert seen and set(seen) == {"Basic " + base64.b64encode(sent.encode()).decode()}
    assert token not in str(caught.value)
    assert token not in (tmp_path / "m.git" / "config").read_text()
