"""Config files and the store selection order."""

from __future__ import annotations

import pytest

from portctl.config import load_settings, resolve_store
from portctl.errors import InvalidInput

CONFIG = """
store = "file:state/ports.json"
host = "web-1"
environment = "staging"
environments = ["qa"]
stack = ["postgres", "vector_db"]

[types.ml]
range = [7500, 7599]

[services.vector_db]
type = "ml"
port = 7510
ports = { qa = 7520 }
alternatives = [7511]

[services.postgres]
ports = { qa = 5440 }
"""


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("PORTCTL_CONFIG", "PORTCTL_STORE", "PORTCTL_HOST", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_portctl_toml_adds_services_types_and_environments(clean_env, tmp_path):
    (tmp_path / "portctl.toml").write_text(CONFIG)
    nested = tmp_path / "app" / "src"
    nested.mkdir(parents=True)
    clean_env.chdir(nested)  # found from a subfolder, like git finds .git
    settings = load_settings()
    policy = settings.policy
    assert settings.path == str(tmp_path / "portctl.toml")
    assert settings.host == "web-1"
    assert policy.default_environment == "staging"
    assert policy.environments == ("production", "development", "staging", "qa")
    assert policy.services["vector_db"].preferred("qa") == [7520, 7510, 7511]
    assert policy.services["postgres"].preferred("qa") == [5440, 5432, 5433]  # built-in kept
    assert (policy.types["ml"].low, policy.types["ml"].high) == (7500, 7599)
    assert settings.stack_services() == ["postgres", "vector_db"]
    assert settings.store == f"file://{tmp_path}/state/ports.json"  # relative to the config file


def test_pyproject_tool_section_is_read(clean_env, tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.portctl]\nhost = "ci-runner"\n')
    assert load_settings().host == "ci-runner"


def test_no_config_means_the_built_in_policy(clean_env):
    settings = load_settings()
    assert settings.path is None
    assert settings.policy.services["postgres"].preferred("development") == [5433, 5432]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[types.ml]\nrange = [7600, 7500]", "types.ml.range"),
        ("[types.ml]\nrange = [1, 70000]", "types.ml.range"),
        ("[services.Bad]\nport = 1", "services.Bad"),
        ("[services.x]\nport = 0", "services.x.port"),
        ("[services.x]\ntype = 'nope'", "services.x.type"),
        ("[services.x]\nprotocol = 'sctp'", "services.x.protocol"),
        ("environment = 'qa'", "environment"),
        ("colour = 'blue'", "config"),
        ("this is not toml", "config"),
    ],
)
def test_bad_config_names_the_field(clean_env, tmp_path, text, field):
    (tmp_path / "portctl.toml").write_text(text)
    with pytest.raises(InvalidInput) as err:
        load_settings()
    assert field in str(err.value)


def test_store_selection_order_and_reported_source(clean_env, tmp_path):
    clean_env.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    clean_env.setattr("os.geteuid", lambda: 1000)  # the non-root default location
    settings = load_settings()
    assert resolve_store(None, settings).source == "default"
    assert resolve_store(None, settings).url == f"file://{tmp_path}/state/portctl/store.json"
    clean_env.setenv("PORTCTL_STORE", str(tmp_path / "env.json"))
    assert resolve_store(None, settings).source == "PORTCTL_STORE"
    (tmp_path / "portctl.toml").write_text('store = "file:cfg.json"\n')
    settings = load_settings()
    choice = resolve_store(None, settings)
    assert (choice.url, choice.source) == (
        f"file://{tmp_path}/cfg.json",
        f"config file {tmp_path}/portctl.toml",
    )
    flag = resolve_store("etcd://127.0.0.1:2379", settings)
    assert (flag.url, flag.source) == ("etcd://127.0.0.1:2379", "--store flag")


def test_portctl_config_variable_points_at_a_file(clean_env, tmp_path):
    path = tmp_path / "elsewhere.toml"
    path.write_text('host = "from-env"\n')
    clean_env.setenv("PORTCTL_CONFIG", str(path))
    assert load_settings().host == "from-env"
    clean_env.setenv("PORTCTL_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(InvalidInput, match="PORTCTL_CONFIG"):
        load_settings()
