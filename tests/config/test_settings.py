"""Config files and the store selection order."""

from __future__ import annotations

import pytest

from portctl.config.settings import load_settings, resolve_store
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
    for var in ("PORTCTL_CONFIG", "PORTCTL_STORE", "PORTCTL_HOST", "PORTCTL_ENV", "XDG_STATE_HOME"):
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
        ("color = 'blue'", "the top level: 'color' is not valid"),
        ("this is not toml", "config"),
    ],
)
def test_bad_config_names_the_field(clean_env, tmp_path, text, field):
    (tmp_path / "portctl.toml").write_text(text)
    with pytest.raises(InvalidInput) as err:
        load_settings()
    assert field in str(err.value)
    if text != "this is not toml":
        assert str(err.value).startswith(f"{tmp_path}/portctl.toml: ")  # the file is named


def test_store_selection_order_and_reported_source(clean_env, tmp_path):
    clean_env.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    clean_env.setattr("os.geteuid", lambda: 1000)  # the non-root default location
    settings = load_settings()
    assert resolve_store(None, settings).source == "default"
    assert resolve_store(None, settings).url == f"file://{tmp_path}/state/portctl/store.json"
    assert not (tmp_path / "state").exists()  # choosing a store creates no folder
    (tmp_path / "portctl.toml").write_text('store = "file:cfg.json"\n')
    settings = load_settings()
    choice = resolve_store(None, settings)
    assert (choice.url, choice.source) == (
        f"file://{tmp_path}/cfg.json",
        f"config file {tmp_path}/portctl.toml",
    )
    # A variable set in a shell beats the checked-in config file; the flag beats both.
    clean_env.setenv("PORTCTL_STORE", str(tmp_path / "env.json"))
    choice = resolve_store(None, settings)
    assert (choice.url, choice.source) == (f"file://{tmp_path}/env.json", "PORTCTL_STORE")
    flag = resolve_store("etcd://127.0.0.1:2379", settings)
    assert (flag.url, flag.source) == ("etcd://127.0.0.1:2379", "--store flag")


def test_host_and_environment_variables_beat_the_config_file(clean_env, tmp_path):
    (tmp_path / "portctl.toml").write_text('host = "web-1"\nenvironment = "staging"\n')
    assert (load_settings().host, load_settings().policy.default_environment) == ("web-1", "staging")
    clean_env.setenv("PORTCTL_HOST", "from-shell")
    clean_env.setenv("PORTCTL_ENV", "development")
    settings = load_settings()
    assert (settings.host, settings.policy.default_environment) == ("from-shell", "development")


def test_a_bad_environment_variable_is_named(clean_env):
    clean_env.setenv("PORTCTL_ENV", "stagin")
    with pytest.raises(InvalidInput, match="PORTCTL_ENV: 'stagin' is not valid"):
        load_settings()


def test_config_store_in_a_missing_folder_names_what_would_change_it(clean_env, tmp_path):
    (tmp_path / "portctl.toml").write_text('store = "file:no-such/store.json"\n')
    settings = load_settings()
    with pytest.raises(InvalidInput) as err:
        resolve_store(None, settings)
    text = str(err.value)
    assert f"{tmp_path}/no-such does not exist" in text
    assert f"change store in {tmp_path}/portctl.toml" in text
    assert "override it with store or PORTCTL_STORE" in text
    clean_env.setenv("PORTCTL_STORE", str(tmp_path / "env.json"))  # which does change it
    assert resolve_store(None, settings).source == "PORTCTL_STORE"


# Unknown keys: a typo is refused at every level, naming the file, the table and the closest key.

TYPOS = [
    ("portctl.toml", 'stor = "file:x.json"\n', "the top level", "stor", "store"),
    ("portctl.toml", "[service.vector_db]\nport = 7510\n", "the top level", "service", "services"),
    ("portctl.toml", "[types.ml]\nrnage = [7500, 7599]\n", "[types.ml]", "rnage", "range"),
    ("portctl.toml", "[services.vector_db]\nprot = 7510\n", "[services.vector_db]", "prot", "port"),
    (
        "portctl.toml",
        "[services.vector_db]\nport = 7510\nalternative = [7512]\n",
        "[services.vector_db]",
        "alternative",
        "alternatives",
    ),
    (
        "portctl.toml",
        'environments = ["qa"]\n[services.vector_db]\nports = { developmnet = 7511 }\n',
        "[services.vector_db.ports]",
        "developmnet",
        "development",
    ),
    ("portctl.toml", "[services.vector_db]\nports = { q = 7511 }\n", "[services.vector_db.ports]", "q", None),
    ("pyproject.toml", '[tool.portctl]\nhots = "ci"\n', "[tool.portctl]", "hots", "host"),
    (
        "pyproject.toml",
        "[tool.portctl.services.api]\nprotocl = 'udp'\n",
        "[tool.portctl.services.api]",
        "protocl",
        "protocol",
    ),
]


@pytest.mark.parametrize(("name", "text", "table", "key", "closest"), TYPOS, ids=[t[3] for t in TYPOS])
def test_unknown_keys_are_refused_naming_file_table_and_closest_key(
    clean_env, tmp_path, name, text, table, key, closest
):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InvalidInput) as err:
        load_settings()
    message = str(err.value)
    assert message.startswith(f"{path}: {table}: {key!r} is not valid"), message
    if closest:
        assert f"did you mean {closest!r}?" in message
    else:
        assert "did you mean" not in message
        assert "one of production, development, staging" in message


def test_every_known_key_is_accepted(clean_env, tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        "[tool.portctl]\n"
        + CONFIG.replace("[types.", "[tool.portctl.types.").replace("[services.", "[tool.portctl.services.")
    )
    settings = load_settings()
    assert settings.policy.services["vector_db"].preferred("qa") == [7520, 7510, 7511]


def test_portctl_config_variable_points_at_a_file(clean_env, tmp_path):
    path = tmp_path / "elsewhere.toml"
    path.write_text('host = "from-env"\n')
    clean_env.setenv("PORTCTL_CONFIG", str(path))
    assert load_settings().host == "from-env"
    clean_env.setenv("PORTCTL_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(InvalidInput, match="PORTCTL_CONFIG"):
        load_settings()


def test_a_stack_entry_must_be_a_known_service(clean_env, tmp_path):
    (tmp_path / "portctl.toml").write_text('stack = ["postgress"]\n')
    with pytest.raises(InvalidInput) as err:
        load_settings()
    assert "stack: 'postgress' is not valid" in str(err.value)
    assert "did you mean 'postgres'?" in str(err.value)
    (tmp_path / "portctl.toml").write_text('stack = ["postgres", "myapp"]\n[services.myapp]\n')
    assert load_settings().stack_services() == ["postgres", "myapp"]  # a service of its own: a table
