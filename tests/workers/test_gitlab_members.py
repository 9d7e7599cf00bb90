"""Access levels read from the fake GitLab's members API with python-gitlab, kept in Redis ≤ 5 minutes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import Redis

from tests import people
from tests.fakegitlab import FakeGitLab
from workers import schema
from workers.config import GitLabSettings, Project
from workers.gitlab_members import AccessLevel, Memberships, RightsUnavailable
from workers.secrets import Secret


@pytest.fixture
def fake() -> Iterator[FakeGitLab]:
    made = people.gitlab().start()
    people.arrange(made, "http://pushdeploy.test")
    yield made
    made.stop()


def memberships(redis: Redis, fake: FakeGitLab, token: str = people.GITLAB_TOKEN) -> Memberships:
    projects = {
        "sample-app": Project("sample-app", "tools/sample-app", "/r", (), (), {}),
        "other-app": Project("other-app", "43", "/r", (), (), {}),  # configured by id
    }
    return Memberships(redis, GitLabSettings(fake.url, Secret(token), 2.0), projects)


@pytest.mark.parametrize(
    ("user", "sample", "other"),
    [
        ("guest", AccessLevel.GUEST, AccessLevel.NONE),
        ("reporter", AccessLevel.REPORTER, AccessLevel.NONE),
        ("developer", AccessLevel.DEVELOPER, AccessLevel.NONE),
        ("maintainer", AccessLevel.MAINTAINER, AccessLevel.MAINTAINER),
        ("owner", AccessLevel.OWNER, AccessLevel.NONE),
        ("blocked", AccessLevel.NONE, AccessLevel.NONE),  # a Developer, but blocked in GitLab
        ("outsider", AccessLevel.NONE, AccessLevel.NONE),
    ],
)
def test_levels_come_from_the_members_api(
    redis: Redis, fake: FakeGitLab, user: str, sample: AccessLevel, other: AccessLevel
) -> None:
    found = memberships(redis, fake).levels(fake.people.users[user]["id"])
    assert found == {"sample-app": sample, "other-app": other}


def test_levels_are_kept_five_minutes_and_a_refresh_asks_again(redis: Redis, fake: FakeGitLab) -> None:
    user_id = fake.people.users["developer"]["id"]
    first = memberships(redis, fake)
    assert first.levels(user_id)["sample-app"] is AccessLevel.DEVELOPER
    assert 295 <= redis.ttl(schema.rights(user_id)) <= schema.RIGHTS_TTL == 300
    asked = len(fake.requests)
    fake.people.set_member(people.SAMPLE_ID, "developer", 40)
    assert memberships(redis, fake).levels(user_id)["sample-app"] is AccessLevel.DEVELOPER  # another process
    assert len(fake.requests) == asked  # answered from Redis
    assert first.levels(user_id, refresh=True)["sample-app"] is AccessLevel.MAINTAINER


def test_gitlab_unreachable_or_refusing_raises_and_caches_nothing(redis: Redis, fake: FakeGitLab) -> None:
    user_id = fake.people.users["developer"]["id"]
    with pytest.raises(RightsUnavailable, match="401"):
        memberships(redis, fake, token="wrong").levels(user_id)
    made = memberships(redis, fake)
    fake.stop()
    with pytest.raises(RightsUnavailable, match=r"cannot read your rights from GitLab at http://127\.0\.0\.1:"):
        made.levels(user_id)
    assert not redis.exists(schema.rights(user_id))


def test_unknown_levels_round_down() -> None:
    assert AccessLevel.of(35) is AccessLevel.DEVELOPER
    assert AccessLevel.of(60) is AccessLevel.OWNER
    assert AccessLevel.of(0) is AccessLevel.NONE
